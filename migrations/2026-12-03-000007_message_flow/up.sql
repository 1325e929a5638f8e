-- The message flow of an order line, followable by one id.
--
-- Every change a request makes keeps that request's id: on its outbox row
-- (the relay puts it on the AMQP message as correlation_id and traceparent),
-- and on the stock movement the worker writes for it.
ALTER TABLE outbox ADD COLUMN request_id VARCHAR(128);
ALTER TABLE mouvements ADD COLUMN request_id VARCHAR(128);

-- One row per line change (per stock message), written in the transaction
-- of the change; the relay stamps when the broker confirmed it, the worker
-- when it applied it and with what outcome. GET
-- /commandes-produits/{id}/historique reads it. Rows outlive a deleted
-- line (its history stays readable) and are purged after
-- `outbox.history_retention_secs`.
CREATE TABLE historique_lignes (
    message_id  UUID PRIMARY KEY,
    ligne_id    BIGINT NOT NULL,
    commande_id BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    action      VARCHAR(16) NOT NULL,
    produit_id  BIGINT NOT NULL,
    quantite    INTEGER NOT NULL,
    request_id  VARCHAR(128),
    accepte_le  TIMESTAMPTZ NOT NULL DEFAULT now(),
    publie_le   TIMESTAMPTZ,
    applique_le TIMESTAMPTZ,
    -- RESERVE, LIBERE, REJETE (applied), PERIME (a newer version was
    -- already applied), REFUSE (dead-lettered; `motif` says why).
    resultat    VARCHAR(16),
    motif       TEXT
);
CREATE INDEX historique_lignes_ligne ON historique_lignes (ligne_id, version);
CREATE INDEX historique_lignes_accepte_le ON historique_lignes (accepte_le);

-- Least privilege, as in 000006: the orders service writes a change and
-- stamps its publication; the worker stamps its outcome and nothing else.
GRANT SELECT, INSERT, DELETE ON historique_lignes TO ordersys_orders;
GRANT UPDATE (publie_le) ON historique_lignes TO ordersys_orders;
GRANT SELECT ON historique_lignes TO ordersys_worker;
GRANT UPDATE (applique_le, resultat, motif) ON historique_lignes TO ordersys_worker;
