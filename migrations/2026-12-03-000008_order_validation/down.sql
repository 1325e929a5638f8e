DROP POLICY outbox_worker ON outbox;
CREATE POLICY outbox_worker ON outbox TO ordersys_worker
    USING (exchange = 'stock_alerts') WITH CHECK (exchange = 'stock_alerts');
DROP TABLE evenements_traites;
DROP TABLE validation_lignes;
ALTER TABLE commandes
    DROP COLUMN validation,
    DROP COLUMN motif,
    DROP COLUMN validation_commencee_le,
    DROP COLUMN validation_echeance,
    DROP COLUMN validation_terminee_le;
