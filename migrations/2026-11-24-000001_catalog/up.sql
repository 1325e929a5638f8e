-- The product catalog and the history of stock movements applied to it.
-- The API validates first; these constraints are the last line of defence.

CREATE TABLE produits (
    id                BIGSERIAL      PRIMARY KEY,
    nom               VARCHAR(200)   NOT NULL CHECK (char_length(btrim(nom)) >= 1),
    description       TEXT,
    prix              NUMERIC(12, 2) NOT NULL CHECK (prix >= 0),
    quantite_en_stock INTEGER        NOT NULL CHECK (quantite_en_stock >= 0)
);

-- One row per stock change the worker applied (never for a catalog edit).
-- delta < 0 reserves stock, delta > 0 releases it.
CREATE TABLE mouvements (
    id                BIGSERIAL   PRIMARY KEY,
    produit_id        BIGINT      NOT NULL REFERENCES produits (id) ON DELETE CASCADE,
    ligne_id          BIGINT,
    commande_id       BIGINT,
    message_id        UUID,
    action            VARCHAR(16) NOT NULL CHECK (action IN ('CREATED', 'UPDATED', 'DELETED')),
    delta             INTEGER     NOT NULL CHECK (delta <> 0),
    quantite_en_stock INTEGER     NOT NULL CHECK (quantite_en_stock >= 0),
    occurred_at       TIMESTAMPTZ,
    applique_le       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX mouvements_produit_id_idx ON mouvements (produit_id, id DESC);
