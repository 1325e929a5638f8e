DROP POLICY outbox_orders ON outbox;
DROP POLICY outbox_worker ON outbox;
ALTER TABLE outbox DISABLE ROW LEVEL SECURITY;
-- The roles stay: other databases on the server may use them. Only what
-- this database granted them is taken back.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ordersys_products, ordersys_orders, ordersys_worker;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ordersys_products, ordersys_orders, ordersys_worker;
DO $$
BEGIN
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM ordersys_products, ordersys_orders, ordersys_worker',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO PUBLIC', current_database());
END
$$;
