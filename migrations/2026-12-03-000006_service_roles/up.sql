-- Least privilege: one login role per service, each granted only what its
-- queries use. The roles are created without a password, so they can log
-- in only where PostgreSQL trusts the connection; `ordersys migrate` gives
-- them their passwords (migrate.*_password_file). Roles belong to the
-- server, not to this database: another ordersys database on the same
-- server shares them (and its migrations find them already there).
-- Creating them needs CREATEROLE (or a superuser) as the migrating owner.
DO $$
DECLARE
    service TEXT;
BEGIN
    FOREACH service IN ARRAY ARRAY['ordersys_products', 'ordersys_orders', 'ordersys_worker'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = service) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', service);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- Another database's migrations created it just now.
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- Nobody but the owner creates objects in this database's schema
-- (PostgreSQL before 15 lets every role create in public).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Only the services' roles (and the owner) may connect to this database.
DO $$
BEGIN
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ordersys_products, ordersys_orders, ordersys_worker',
                   current_database());
END
$$;

-- Every service may read which migrations are applied (a service that does
-- not migrate waits until they all are).
GRANT SELECT ON __diesel_schema_migrations TO ordersys_products, ordersys_orders, ordersys_worker;

-- products: the catalog; reads movements and counts the lines that
-- reference a product before deleting it (its movements go with it, by
-- the foreign key, which runs as the owner).
GRANT SELECT, INSERT, UPDATE, DELETE ON produits TO ordersys_products;
GRANT USAGE ON SEQUENCE produits_id_seq TO ordersys_products;
GRANT SELECT ON mouvements, commandes_produits TO ordersys_products;

-- orders: orders, their lines and the outbox (written with each change,
-- read and marked sent by the relay, purged after retention); reads
-- product prices.
GRANT SELECT, INSERT, UPDATE, DELETE ON commandes, commandes_produits, outbox TO ordersys_orders;
GRANT USAGE ON SEQUENCE commandes_id_seq, commandes_produits_id_seq, outbox_id_seq TO ordersys_orders;
GRANT SELECT ON produits TO ordersys_orders;

-- worker: the stock column of products, reservations, processed message
-- ids, movements, the stock status of lines, and the outbox (stock alerts,
-- and its relay). It may not rename, reprice or delete a product, nor
-- change what a line orders.
GRANT SELECT ON produits, commandes_produits TO ordersys_worker;
GRANT UPDATE (quantite_en_stock) ON produits TO ordersys_worker;
GRANT UPDATE (statut_stock) ON commandes_produits TO ordersys_worker;
GRANT SELECT, INSERT, UPDATE ON reservations TO ordersys_worker;
GRANT SELECT, INSERT, DELETE ON messages_traites TO ordersys_worker;
GRANT SELECT, INSERT ON mouvements TO ordersys_worker;
GRANT USAGE ON SEQUENCE mouvements_id_seq TO ordersys_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO ordersys_worker;
GRANT USAGE ON SEQUENCE outbox_id_seq TO ordersys_worker;

-- The outbox is shared, its rows are not: orders writes and publishes stock
-- changes, the worker stock alerts. Without these policies the worker could
-- insert a stock change and have the orders relay publish it. The owner (and
-- so `ordersys migrate`, and deployments with one role) is not subject to them.
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY outbox_orders ON outbox TO ordersys_orders
    USING (exchange = 'product_exchange') WITH CHECK (exchange = 'product_exchange');
CREATE POLICY outbox_worker ON outbox TO ordersys_worker
    USING (exchange = 'stock_alerts') WITH CHECK (exchange = 'stock_alerts');
