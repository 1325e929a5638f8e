SELECT id, message_id, exchange, routing_key, payload, request_id,
       statement_timestamp() AS claimed_at
  FROM outbox
 WHERE sent_at IS NULL AND exchange = ANY($1)
 ORDER BY id
 LIMIT $2
   FOR UPDATE SKIP LOCKED
