-- Orders, their lines, and the transactional outbox that carries every
-- line change to the stock worker (written in the same transaction as the
-- change, published later by the relay).

CREATE TABLE commandes (
    id          BIGSERIAL   PRIMARY KEY,
    statut      VARCHAR(16) NOT NULL DEFAULT 'EN_ATTENTE'
                CHECK (statut IN ('EN_ATTENTE', 'EN_COURS', 'EXPEDIEE', 'ANNULEE')),
    "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE commandes_produits (
    id            BIGSERIAL      PRIMARY KEY,
    commande_id   BIGINT         NOT NULL REFERENCES commandes (id),
    produit_id    BIGINT         NOT NULL REFERENCES produits (id),
    quantite      INTEGER        NOT NULL CHECK (quantite >= 1),
    -- the product's price when the line was created (or moved to another product)
    prix_unitaire NUMERIC(12, 2) NOT NULL CHECK (prix_unitaire >= 0),
    statut_stock  VARCHAR(16)    NOT NULL DEFAULT 'EN_ATTENTE'
                  CHECK (statut_stock IN ('EN_ATTENTE', 'RESERVE', 'REJETE', 'LIBERE')),
    -- bumped by every change; carried by each message so the worker can
    -- ignore stale or duplicated ones
    version       BIGINT         NOT NULL DEFAULT 1 CHECK (version >= 1),
    modifiee_le   TIMESTAMPTZ    NOT NULL DEFAULT now()
);

CREATE INDEX commandes_produits_commande_id_idx ON commandes_produits (commande_id);
CREATE INDEX commandes_produits_produit_id_idx ON commandes_produits (produit_id);

-- Messages to publish. The relay claims unsent rows with FOR UPDATE SKIP
-- LOCKED, publishes them, and sets sent_at once the broker has confirmed;
-- sent rows are kept for a while (outbox.retention_secs) for inspection.
CREATE TABLE outbox (
    id          BIGSERIAL    PRIMARY KEY,
    message_id  UUID         NOT NULL UNIQUE,
    exchange    VARCHAR(255) NOT NULL,
    routing_key VARCHAR(255) NOT NULL,
    -- kept as text, not jsonb, so the body goes out byte for byte as written
    payload     TEXT         NOT NULL,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ
);

CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
