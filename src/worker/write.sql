WITH stock AS (
    UPDATE produits p SET quantite_en_stock = u.stock
      FROM unnest($1, $2) AS u (id, stock) WHERE p.id = u.id
    RETURNING 1
), reservation AS (
    SELECT * FROM unnest($3, $4, $5, $6, $7) AS u (l, p, q, v, is_new)
), changed AS (
    UPDATE reservations r SET produit_id = u.p, quantite = u.q, version = u.v
      FROM reservation u WHERE r.ligne_id = u.l AND NOT u.is_new
    RETURNING 1
), added AS (
    INSERT INTO reservations (ligne_id, produit_id, quantite, version)
    SELECT l, p, q, v FROM reservation WHERE is_new ORDER BY l
    RETURNING 1
), moved AS (
    INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta,
                            quantite_en_stock, occurred_at, request_id)
    SELECT p, l, c, m, a, d, s, o, r
      FROM unnest($8, $9, $10, $11, $12, $13, $14, $15, $16)
           WITH ORDINALITY AS u (p, l, c, m, a, d, s, o, r, n)
     ORDER BY n
    RETURNING 1
), status AS (
    UPDATE commandes_produits c SET statut_stock = u.statut
      FROM unnest($17, $18, $19) AS u (id, version, statut)
     WHERE c.id = u.id AND c.version = u.version
    RETURNING 1
), stamped AS (
    SELECT * FROM unnest($20, $21, $22, $23, $24) AS u (id, l, v, r, m)
), locked AS (
    -- In message id order, as the relay locks them (no deadlock with it);
    -- a change's first outcome stays (a redelivery after its id was
    -- forgotten is stale, not news), and only the row of this line and
    -- version is touched.
    SELECT h.message_id FROM historique_lignes h JOIN stamped u
        ON h.message_id = u.id AND h.ligne_id = u.l AND h.version = u.v
     WHERE h.applique_le IS NULL
     ORDER BY h.message_id FOR UPDATE OF h
), history AS (
    UPDATE historique_lignes h SET applique_le = statement_timestamp(), resultat = u.r, motif = u.m
      FROM stamped u JOIN locked ON locked.message_id = u.id
     WHERE h.message_id = u.id
    RETURNING 1
)
SELECT 1
