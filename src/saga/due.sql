SELECT id, extract(epoch FROM validation_echeance - validation_commencee_le)::float8 AS after
  FROM commandes
 WHERE validation = 'EN_COURS' AND validation_echeance <= now()
 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
