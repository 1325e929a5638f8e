-- Retention purges processed message ids by age, a chunk at a time: the
-- age must be indexed, or each chunk scans the whole table.
CREATE INDEX messages_traites_traite_le_idx ON messages_traites (traite_le);
