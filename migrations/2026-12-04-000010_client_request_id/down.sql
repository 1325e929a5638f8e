ALTER TABLE historique_lignes DROP COLUMN client_request_id;
