DROP TABLE outbox;
DROP TABLE commandes_produits;
DROP TABLE commandes;
