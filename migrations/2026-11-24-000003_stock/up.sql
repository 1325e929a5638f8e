-- The stock worker's state: what each order line currently reserves, which
-- messages were processed, and the function that applies a batch of
-- order-line changes to stock in one round trip.

-- What each order line holds, and the newest version of it applied. There
-- is no foreign key to the line: a deleted line's reservation must still be
-- found to be released.
CREATE TABLE reservations (
    ligne_id   BIGINT  PRIMARY KEY,
    produit_id BIGINT,
    quantite   INTEGER NOT NULL DEFAULT 0 CHECK (quantite >= 0),
    version    BIGINT  NOT NULL,
    CHECK ((produit_id IS NULL) = (quantite = 0))
);

CREATE INDEX reservations_produit_id_idx ON reservations (produit_id) WHERE quantite > 0;

-- Every message id applied, recorded in the same transaction as its effect:
-- a redelivered message finds its id here and changes nothing.
CREATE TABLE messages_traites (
    message_id UUID        PRIMARY KEY,
    traite_le  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Applies a batch of stock messages, in order, all or nothing (the caller's
-- transaction). Argument i of every array describes message i.
--
-- Tracked messages (with ligne_id and version) are idempotent and
-- order-independent: the line's reservation is moved to the state the
-- message describes only if its version is newer than the one applied;
-- older or repeated ones change nothing. Seed-format messages (no ligne_id)
-- apply their delta as such.
--
-- Stock only changes in single UPDATE statements guarded by
-- `quantite_en_stock >= n`, so it is never negative and never read, changed
-- and written back. Locks are taken in a fixed order (reservations by
-- line, products by id, lines by id) so concurrent batches cannot deadlock.
--
-- One row per message: o_outcome is 'applied', 'duplicate', 'stale',
-- 'unknown_product' or 'insufficient_stock' (seed format only: there is no
-- line to mark REJETE); o_statut is the line's new statut_stock; o_alert is
-- 'STOCK_EPUISE' or 'STOCK_BAS' when this message's reservation crossed a
-- threshold (with the product and its stock).
CREATE FUNCTION ordersys_apply_stock(
    p_message_ids      UUID[],
    p_ligne_ids        BIGINT[],
    p_versions         BIGINT[],
    p_actions          TEXT[],
    p_produit_ids      BIGINT[],
    p_quantites        INTEGER[],
    p_commande_ids     BIGINT[],
    p_anciens_produits BIGINT[],
    p_anciennes_qtes   INTEGER[],
    p_occurred_at      TIMESTAMPTZ[],
    p_seuil            INTEGER
) RETURNS TABLE (
    o_idx            INTEGER,
    o_outcome        TEXT,
    o_statut         TEXT,
    o_alert          TEXT,
    o_alert_produit  BIGINT,
    o_alert_stock    INTEGER
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n            INTEGER := coalesce(array_length(p_actions, 1), 0);
    i            INTEGER;
    v_mid        UUID;
    v_ligne      BIGINT;
    v_version    BIGINT;
    v_action     TEXT;
    v_produit    BIGINT;
    v_qte        INTEGER;
    v_old_p      BIGINT;
    v_old_q      INTEGER;
    v_old_v      BIGINT;
    v_found      BOOLEAN;
    v_target_p   BIGINT;
    v_target_q   INTEGER;
    v_statut     TEXT;
    v_after      INTEGER;
    v_before     INTEGER;
    v_reserved   BOOLEAN;
    v_lines      BIGINT[]  := '{}';
    v_line_vers  BIGINT[]  := '{}';
    v_line_stat  TEXT[]    := '{}';
BEGIN
    -- Fixed lock order: reservations, then products, by id.
    PERFORM 1 FROM reservations WHERE ligne_id = ANY (p_ligne_ids) ORDER BY ligne_id FOR UPDATE;
    PERFORM 1 FROM produits
     WHERE id IN (SELECT unnest(p_produit_ids)
                  UNION SELECT unnest(p_anciens_produits)
                  UNION SELECT r.produit_id FROM reservations r WHERE r.ligne_id = ANY (p_ligne_ids))
     ORDER BY id FOR NO KEY UPDATE;

    FOR i IN 1 .. n LOOP
        v_mid := p_message_ids[i];
        v_ligne := p_ligne_ids[i];
        v_version := p_versions[i];
        v_action := p_actions[i];
        v_produit := p_produit_ids[i];
        v_qte := p_quantites[i];
        o_idx := i;
        o_statut := NULL;
        o_alert := NULL;
        o_alert_produit := NULL;
        o_alert_stock := NULL;

        IF v_mid IS NOT NULL THEN
            INSERT INTO messages_traites (message_id) VALUES (v_mid) ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                o_outcome := 'duplicate';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        IF v_ligne IS NOT NULL THEN
            ---------------------------------------------------------------
            -- Tracked: move the line's reservation to the state described.
            ---------------------------------------------------------------
            SELECT r.produit_id, r.quantite, r.version INTO v_old_p, v_old_q, v_old_v
              FROM reservations r WHERE r.ligne_id = v_ligne;
            v_found := FOUND;
            IF NOT v_found THEN
                v_old_p := NULL; v_old_q := 0; v_old_v := 0;
            END IF;
            IF v_version <= v_old_v THEN
                o_outcome := 'stale';
                RETURN NEXT;
                CONTINUE;
            END IF;

            IF v_action = 'DELETED' THEN
                v_target_p := NULL; v_target_q := 0; v_statut := 'LIBERE';
            ELSE
                v_target_p := v_produit; v_target_q := v_qte;
                PERFORM 1 FROM produits WHERE id = v_target_p;
                IF NOT FOUND THEN
                    -- Dead-lettered by the caller: not processed.
                    DELETE FROM messages_traites WHERE message_id = v_mid;
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
            END IF;

            v_reserved := FALSE;
            IF v_target_p IS NOT NULL AND v_target_p = v_old_p THEN
                -- Same product: one delta.
                UPDATE produits SET quantite_en_stock = quantite_en_stock + v_old_q - v_target_q
                 WHERE id = v_target_p AND quantite_en_stock + v_old_q >= v_target_q
                 RETURNING quantite_en_stock INTO v_after;
                IF FOUND THEN
                    v_reserved := TRUE;
                    IF v_old_q <> v_target_q THEN
                        INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                        VALUES (v_target_p, v_ligne, p_commande_ids[i], v_mid, v_action, v_old_q - v_target_q, v_after, p_occurred_at[i]);
                    END IF;
                    v_before := v_after + v_target_q - v_old_q;
                END IF;
            END IF;

            IF NOT v_reserved THEN
                -- Release what the line holds (the product may be gone).
                IF v_old_q > 0 THEN
                    UPDATE produits SET quantite_en_stock = quantite_en_stock + v_old_q
                     WHERE id = v_old_p RETURNING quantite_en_stock INTO v_after;
                    IF FOUND THEN
                        INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                        VALUES (v_old_p, v_ligne, p_commande_ids[i], v_mid, v_action, v_old_q, v_after, p_occurred_at[i]);
                    END IF;
                END IF;
                -- Reserve what it asks for, if the stock allows.
                IF v_target_p IS NOT NULL THEN
                    UPDATE produits SET quantite_en_stock = quantite_en_stock - v_target_q
                     WHERE id = v_target_p AND quantite_en_stock >= v_target_q
                     RETURNING quantite_en_stock INTO v_after;
                    IF FOUND THEN
                        v_reserved := TRUE;
                        v_before := v_after + v_target_q;
                        INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                        VALUES (v_target_p, v_ligne, p_commande_ids[i], v_mid, v_action, -v_target_q, v_after, p_occurred_at[i]);
                    ELSE
                        v_target_p := NULL; v_target_q := 0;
                    END IF;
                END IF;
            END IF;

            IF v_action <> 'DELETED' THEN
                v_statut := CASE WHEN v_reserved THEN 'RESERVE' ELSE 'REJETE' END;
            END IF;
            IF v_reserved AND v_after < v_before THEN
                IF v_after = 0 THEN
                    o_alert := 'STOCK_EPUISE';
                ELSIF v_after < p_seuil AND v_before >= p_seuil THEN
                    o_alert := 'STOCK_BAS';
                END IF;
                IF o_alert IS NOT NULL THEN
                    o_alert_produit := v_target_p; o_alert_stock := v_after;
                END IF;
            END IF;

            IF v_found THEN
                UPDATE reservations SET produit_id = v_target_p, quantite = v_target_q, version = v_version
                 WHERE ligne_id = v_ligne;
            ELSE
                INSERT INTO reservations (ligne_id, produit_id, quantite, version)
                VALUES (v_ligne, v_target_p, v_target_q, v_version);
            END IF;
            v_lines := v_lines || v_ligne;
            v_line_vers := v_line_vers || v_version;
            v_line_stat := v_line_stat || v_statut;
            o_outcome := 'applied';
            o_statut := v_statut;
            RETURN NEXT;
        ELSE
            ---------------------------------------------------------------
            -- Seed format: apply the delta as such.
            ---------------------------------------------------------------
            IF v_action = 'DELETED' THEN
                UPDATE produits SET quantite_en_stock = quantite_en_stock + v_qte
                 WHERE id = v_produit RETURNING quantite_en_stock INTO v_after;
                IF NOT FOUND THEN
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                INSERT INTO mouvements (produit_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                VALUES (v_produit, p_commande_ids[i], v_mid, v_action, v_qte, v_after, p_occurred_at[i]);
            ELSE
                v_old_p := p_anciens_produits[i];
                v_old_q := coalesce(p_anciennes_qtes[i], 0);
                PERFORM 1 FROM produits WHERE id = v_produit;
                v_found := FOUND;
                IF v_found AND v_old_p IS NOT NULL THEN
                    PERFORM 1 FROM produits WHERE id = v_old_p;
                    v_found := FOUND;
                END IF;
                IF NOT v_found THEN
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                -- What the new product can give, counting what the old
                -- quantity gives back when it is the same product.
                SELECT quantite_en_stock INTO v_before FROM produits WHERE id = v_produit;
                IF v_old_p = v_produit THEN
                    v_before := v_before + v_old_q;
                END IF;
                IF v_before < v_qte THEN
                    o_outcome := 'insufficient_stock';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                IF v_old_p IS NOT NULL AND v_old_q > 0 THEN
                    UPDATE produits SET quantite_en_stock = quantite_en_stock + v_old_q
                     WHERE id = v_old_p RETURNING quantite_en_stock INTO v_after;
                    INSERT INTO mouvements (produit_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                    VALUES (v_old_p, p_commande_ids[i], v_mid, v_action, v_old_q, v_after, p_occurred_at[i]);
                END IF;
                SELECT quantite_en_stock INTO v_before FROM produits WHERE id = v_produit;
                UPDATE produits SET quantite_en_stock = quantite_en_stock - v_qte
                 WHERE id = v_produit AND quantite_en_stock >= v_qte
                 RETURNING quantite_en_stock INTO v_after;
                INSERT INTO mouvements (produit_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
                VALUES (v_produit, p_commande_ids[i], v_mid, v_action, -v_qte, v_after, p_occurred_at[i]);
                IF v_after = 0 AND v_before > 0 THEN
                    o_alert := 'STOCK_EPUISE';
                ELSIF v_after < p_seuil AND v_before >= p_seuil THEN
                    o_alert := 'STOCK_BAS';
                END IF;
                IF o_alert IS NOT NULL THEN
                    o_alert_produit := v_produit; o_alert_stock := v_after;
                END IF;
            END IF;
            o_outcome := 'applied';
            RETURN NEXT;
        END IF;
    END LOOP;

    -- Line statuses last, in id order; a line changed since (newer version)
    -- or deleted is left alone: its own message will set it.
    PERFORM 1 FROM commandes_produits WHERE id = ANY (v_lines) ORDER BY id FOR NO KEY UPDATE;
    UPDATE commandes_produits c SET statut_stock = u.statut
      FROM unnest(v_lines, v_line_vers, v_line_stat) AS u (id, version, statut)
     WHERE c.id = u.id AND c.version = u.version;
END;
$$;
