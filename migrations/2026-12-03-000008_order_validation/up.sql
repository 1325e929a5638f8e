-- Order validation as a saga (README, "Order validation").
--
-- The saga's state is on the order row, so every path that changes an
-- order or its lines reads it under the order's row lock (the one lock they
-- already take): `validation` is NULL until a start, then EN_COURS,
-- CONFIRMEE or REFUSEE; `motif` says why it was refused; the deadline is
-- when an unfinished validation is refused by timeout.
ALTER TABLE commandes
    ADD COLUMN validation VARCHAR(16)
        CHECK (validation IN ('EN_COURS', 'CONFIRMEE', 'REFUSEE')),
    ADD COLUMN motif TEXT,
    ADD COLUMN validation_commencee_le TIMESTAMPTZ,
    ADD COLUMN validation_echeance TIMESTAMPTZ,
    ADD COLUMN validation_terminee_le TIMESTAMPTZ;

-- The timeout sweep finds running validations past their deadline.
CREATE INDEX commandes_validation_echeance_idx ON commandes (validation_echeance)
    WHERE validation = 'EN_COURS';

-- The saga's progress: one row per line of the order, with the line's
-- version the saga waits for and the outcome the worker reported for it
-- (RESERVE, REJETE with what was available, then LIBERE for the
-- compensation of a refused order).
CREATE TABLE validation_lignes (
    commande_id BIGINT      NOT NULL REFERENCES commandes (id) ON DELETE CASCADE,
    ligne_id    BIGINT      NOT NULL,
    version     BIGINT      NOT NULL,
    produit_id  BIGINT      NOT NULL,
    quantite    INTEGER     NOT NULL,
    resultat    VARCHAR(16) CHECK (resultat IN ('RESERVE', 'REJETE', 'LIBERE')),
    disponible  INTEGER,
    PRIMARY KEY (commande_id, ligne_id)
);

-- The ids of the line events the orders service applied (de-duplication,
-- as messages_traites is the worker's); purged after
-- worker.dedupe_retention_secs.
CREATE TABLE evenements_traites (
    message_id UUID        PRIMARY KEY,
    traite_le  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX evenements_traites_traite_le_idx ON evenements_traites (traite_le);

-- Least privilege, as in 000006: the orders service runs the saga; the
-- worker only writes the events to its outbox.
GRANT SELECT, INSERT, UPDATE, DELETE ON validation_lignes, evenements_traites TO ordersys_orders;
DROP POLICY outbox_worker ON outbox;
CREATE POLICY outbox_worker ON outbox TO ordersys_worker
    USING (exchange IN ('stock_alerts', 'order_events'))
    WITH CHECK (exchange IN ('stock_alerts', 'order_events'));
