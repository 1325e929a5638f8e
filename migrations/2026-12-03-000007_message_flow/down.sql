DROP TABLE historique_lignes;
ALTER TABLE mouvements DROP COLUMN request_id;
ALTER TABLE outbox DROP COLUMN request_id;
