UPDATE commandes SET validation = 'EN_COURS', motif = NULL,
       validation_commencee_le = now(),
       validation_echeance = now() + make_interval(secs => $1),
       validation_terminee_le = NULL
 WHERE id = $2
