-- Restores the PL/pgSQL stock function of migration 000003, as it was.

-- Applies a batch of stock messages, in order, all or nothing (the caller's
-- transaction). Argument i of every array describes message i.
--
-- Tracked messages (with ligne_id and version) are idempotent and
-- order-independent: the line's reservation is moved to the state the
-- message describes only if its version is newer than the one applied;
-- older or repeated ones change nothing. Seed-format messages (no ligne_id)
-- apply their delta as such.
--
-- Every product the batch touches is locked (FOR NO KEY UPDATE) before its
-- stock is read, so no other transaction can change it until this one ends:
-- stock is read once, each change is applied here only if it leaves the
-- stock at 0 or more (else the line is REJETE), and each product is written
-- once at the end (CHECK quantite_en_stock >= 0 stays as the last line).
-- One write per product, not per message, also keeps the product rows'
-- version chains short. Locks are taken in a fixed order (reservations by
-- line, products by id, lines by id) so concurrent batches cannot deadlock.
-- Reservations, processed ids and movements are likewise read and written
-- once per batch: the loop itself runs no SQL.
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
    v_known      BIGINT[];             -- the batch's products that exist (locked)
    s_stock      INTEGER[];            -- their stock as the batch changes it
    s_changed    BOOLEAN[];            -- written back at the end
    v_k          INTEGER;              -- position of the target product in v_known
    v_ko         INTEGER;              -- position of the old product
    v_new_ids    UUID[];               -- message ids not processed before
    -- Movements, written at the end. Built with ROW(...)::mouvements, so in
    -- the table's column order: a migration adding a column to mouvements
    -- must update those ROW(...) expressions too.
    v_mvs        mouvements[] := '{}';
    -- The reservations of the batch's lines, read once and written once;
    -- entry k describes line r_lines[k].
    v_pos        INTEGER;
    r_lines      BIGINT[];
    r_prods      BIGINT[];
    r_qtes       INTEGER[];
    r_vers       BIGINT[];
    r_new        BOOLEAN[];            -- no row yet: inserted at the end
    r_touched    BOOLEAN[];            -- changed by this batch
BEGIN
    -- Fixed lock order: reservations, then products, by id.
    SELECT coalesce(array_agg(r.ligne_id), '{}'), coalesce(array_agg(r.produit_id), '{}'),
           coalesce(array_agg(r.quantite), '{}'), coalesce(array_agg(r.version), '{}'),
           coalesce(array_agg(FALSE), '{}'), coalesce(array_agg(FALSE), '{}')
      INTO r_lines, r_prods, r_qtes, r_vers, r_new, r_touched
      FROM (SELECT ligne_id, produit_id, quantite, version FROM reservations
             WHERE ligne_id = ANY (p_ligne_ids) ORDER BY ligne_id FOR UPDATE) r;
    -- Locked products cannot be deleted before this transaction ends, so
    -- v_known stays true for the whole batch.
    SELECT coalesce(array_agg(l.id), '{}'), coalesce(array_agg(l.quantite_en_stock), '{}'),
           coalesce(array_agg(FALSE), '{}')
      INTO v_known, s_stock, s_changed FROM (
        SELECT id, quantite_en_stock FROM produits
         WHERE id IN (SELECT unnest(p_produit_ids)
                      UNION SELECT unnest(p_anciens_produits)
                      UNION SELECT r.produit_id FROM reservations r WHERE r.ligne_id = ANY (p_ligne_ids))
         ORDER BY id FOR NO KEY UPDATE) l;
    -- Every message id of the batch recorded at once; those already there
    -- (processed before, or by a concurrent batch that committed) are
    -- duplicates. A second copy within the batch is one too (see the loop).
    WITH recorded AS (
        INSERT INTO messages_traites (message_id)
        SELECT DISTINCT m FROM unnest(p_message_ids) m WHERE m IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING message_id)
    SELECT coalesce(array_agg(message_id), '{}') INTO v_new_ids FROM recorded;

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
            IF NOT (v_mid = ANY (v_new_ids)) THEN
                o_outcome := 'duplicate';
                RETURN NEXT;
                CONTINUE;
            END IF;
            v_new_ids := array_remove(v_new_ids, v_mid);
        END IF;

        IF v_ligne IS NOT NULL THEN
            ---------------------------------------------------------------
            -- Tracked: move the line's reservation to the state described.
            ---------------------------------------------------------------
            v_pos := array_position(r_lines, v_ligne);
            IF v_pos IS NULL THEN
                v_old_p := NULL; v_old_q := 0; v_old_v := 0;
            ELSE
                v_old_p := r_prods[v_pos]; v_old_q := r_qtes[v_pos]; v_old_v := r_vers[v_pos];
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
                IF NOT (v_target_p = ANY (v_known)) THEN
                    -- Dead-lettered by the caller: not processed.
                    DELETE FROM messages_traites WHERE message_id = v_mid;
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
            END IF;

            v_reserved := FALSE;
            v_k := array_position(v_known, v_target_p);
            v_ko := array_position(v_known, v_old_p);
            IF v_target_p IS NOT NULL AND v_target_p = v_old_p THEN
                -- Same product: one delta.
                IF s_stock[v_k] + v_old_q >= v_target_q THEN
                    v_before := s_stock[v_k];
                    v_after := v_before + v_old_q - v_target_q;
                    s_stock[v_k] := v_after;
                    s_changed[v_k] := TRUE;
                    v_reserved := TRUE;
                    IF v_old_q <> v_target_q THEN
                        v_mvs := v_mvs || ROW(NULL, v_target_p, v_ligne, p_commande_ids[i], v_mid, v_action, v_old_q - v_target_q, v_after, p_occurred_at[i], NULL)::mouvements;
                    END IF;
                END IF;
            END IF;

            IF NOT v_reserved THEN
                -- Release what the line holds (unless the product is gone).
                IF v_old_q > 0 AND v_ko IS NOT NULL THEN
                    v_after := s_stock[v_ko] + v_old_q;
                    s_stock[v_ko] := v_after;
                    s_changed[v_ko] := TRUE;
                    v_mvs := v_mvs || ROW(NULL, v_old_p, v_ligne, p_commande_ids[i], v_mid, v_action, v_old_q, v_after, p_occurred_at[i], NULL)::mouvements;
                END IF;
                -- Reserve what it asks for, if the stock allows.
                IF v_target_p IS NOT NULL THEN
                    IF s_stock[v_k] >= v_target_q THEN
                        v_before := s_stock[v_k];
                        v_after := v_before - v_target_q;
                        s_stock[v_k] := v_after;
                        s_changed[v_k] := TRUE;
                        v_reserved := TRUE;
                        v_mvs := v_mvs || ROW(NULL, v_target_p, v_ligne, p_commande_ids[i], v_mid, v_action, -v_target_q, v_after, p_occurred_at[i], NULL)::mouvements;
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

            IF v_pos IS NULL THEN
                r_lines := r_lines || v_ligne;
                r_prods := r_prods || v_target_p;
                r_qtes := r_qtes || v_target_q;
                r_vers := r_vers || v_version;
                r_new := r_new || TRUE;
                r_touched := r_touched || TRUE;
            ELSE
                r_prods[v_pos] := v_target_p;
                r_qtes[v_pos] := v_target_q;
                r_vers[v_pos] := v_version;
                r_touched[v_pos] := TRUE;
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
            v_k := array_position(v_known, v_produit);
            IF v_action = 'DELETED' THEN
                IF v_k IS NULL THEN
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                v_after := s_stock[v_k] + v_qte;
                s_stock[v_k] := v_after;
                s_changed[v_k] := TRUE;
                v_mvs := v_mvs || ROW(NULL, v_produit, NULL, p_commande_ids[i], v_mid, v_action, v_qte, v_after, p_occurred_at[i], NULL)::mouvements;
            ELSE
                v_old_p := p_anciens_produits[i];
                v_old_q := coalesce(p_anciennes_qtes[i], 0);
                v_ko := array_position(v_known, v_old_p);
                v_found := v_k IS NOT NULL AND (v_old_p IS NULL OR v_ko IS NOT NULL);
                IF NOT v_found THEN
                    o_outcome := 'unknown_product';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                -- What the new product can give, counting what the old
                -- quantity gives back when it is the same product.
                v_before := s_stock[v_k];
                IF v_old_p = v_produit THEN
                    v_before := v_before + v_old_q;
                END IF;
                IF v_before < v_qte THEN
                    o_outcome := 'insufficient_stock';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                IF v_old_p IS NOT NULL AND v_old_q > 0 THEN
                    v_after := s_stock[v_ko] + v_old_q;
                    s_stock[v_ko] := v_after;
                    s_changed[v_ko] := TRUE;
                    v_mvs := v_mvs || ROW(NULL, v_old_p, NULL, p_commande_ids[i], v_mid, v_action, v_old_q, v_after, p_occurred_at[i], NULL)::mouvements;
                END IF;
                v_before := s_stock[v_k];
                v_after := v_before - v_qte;
                s_stock[v_k] := v_after;
                s_changed[v_k] := TRUE;
                v_mvs := v_mvs || ROW(NULL, v_produit, NULL, p_commande_ids[i], v_mid, v_action, -v_qte, v_after, p_occurred_at[i], NULL)::mouvements;
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

    -- Stock: one write per product the batch changed.
    UPDATE produits p SET quantite_en_stock = u.stock
      FROM unnest(v_known, s_stock, s_changed) AS u (id, stock, changed)
     WHERE p.id = u.id AND u.changed;

    -- Reservations: existing rows (locked above) updated; new lines
    -- inserted. A concurrent batch that inserted the same new line first
    -- makes this insert fail: the whole batch rolls back and is retried, and
    -- then sees that row.
    UPDATE reservations r SET produit_id = u.p, quantite = u.q, version = u.v
      FROM unnest(r_lines, r_prods, r_qtes, r_vers, r_new, r_touched) AS u (l, p, q, v, is_new, touched)
     WHERE r.ligne_id = u.l AND u.touched AND NOT u.is_new;
    INSERT INTO reservations (ligne_id, produit_id, quantite, version)
    SELECT u.l, u.p, u.q, u.v
      FROM unnest(r_lines, r_prods, r_qtes, r_vers, r_new) AS u (l, p, q, v, is_new)
     WHERE u.is_new
     ORDER BY u.l;

    INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta, quantite_en_stock, occurred_at)
    SELECT m.produit_id, m.ligne_id, m.commande_id, m.message_id, m.action, m.delta, m.quantite_en_stock, m.occurred_at
      FROM unnest(v_mvs) WITH ORDINALITY AS m
     ORDER BY m.ordinality;

    -- Line statuses last, in id order; a line changed since (newer version)
    -- or deleted is left alone: its own message will set it.
    PERFORM 1 FROM commandes_produits WHERE id = ANY (v_lines) ORDER BY id FOR NO KEY UPDATE;
    UPDATE commandes_produits c SET statut_stock = u.statut
      FROM unnest(v_lines, v_line_vers, v_line_stat) AS u (id, version, statut)
     WHERE c.id = u.id AND c.version = u.version;
END;
$$;
