DROP TRIGGER commandes_produits_moved ON commandes_produits;
DROP TRIGGER commandes_produits_counted ON commandes_produits;
DROP FUNCTION ordersys_count_lines();
ALTER TABLE commandes DROP COLUMN nb_lignes;
