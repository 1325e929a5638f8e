-- The roles stay: other databases on the server may use them. Only what
-- this database granted them is taken back.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ordersys_products, ordersys_orders, ordersys_worker;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ordersys_products, ordersys_orders, ordersys_worker;
