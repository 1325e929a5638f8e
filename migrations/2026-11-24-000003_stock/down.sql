DROP FUNCTION ordersys_apply_stock;
DROP TABLE messages_traites;
DROP TABLE reservations;
