-- Each order counts its lines, so that adding one is a single statement:
-- `UPDATE commandes SET nb_lignes = nb_lignes + 1 WHERE … AND nb_lignes < max`
-- locks the order, checks it is open and has room, and counts the new line
-- at once, re-checked on the latest row after any lock wait. The orders
-- service keeps it exact: +1 when a line is created or moved in, −1 when
-- one is deleted or moved out, in the transaction of the change.
ALTER TABLE commandes
    ADD COLUMN nb_lignes INTEGER NOT NULL DEFAULT 0 CHECK (nb_lignes >= 0);

UPDATE commandes c
   SET nb_lignes = l.n
  FROM (SELECT commande_id, count(*) AS n FROM commandes_produits GROUP BY commande_id) l
 WHERE l.commande_id = c.id;
