DROP TABLE mouvements;
DROP TABLE produits;
