UPDATE validation_lignes v SET version = u.v, resultat = u.r, disponible = u.d
  FROM unnest($1, $2, $3, $4, $5) AS u (c, l, v, r, d)
 WHERE v.commande_id = u.c AND v.ligne_id = u.l
