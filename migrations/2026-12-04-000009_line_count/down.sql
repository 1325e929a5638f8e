ALTER TABLE commandes DROP COLUMN nb_lignes;
