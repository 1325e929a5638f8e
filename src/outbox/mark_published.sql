WITH sent AS (UPDATE outbox SET sent_at = now() WHERE id = ANY($1) RETURNING message_id),
locked AS (
    SELECT h.message_id FROM historique_lignes h
     WHERE h.message_id IN (SELECT message_id FROM sent)
     ORDER BY h.message_id FOR UPDATE
)
UPDATE historique_lignes h SET publie_le = $2
  FROM locked WHERE h.message_id = locked.message_id
