-- Each order counts its lines, so that adding one is a single statement:
-- `SELECT … FROM commandes WHERE id = … AND nb_lignes < max FOR NO KEY
-- UPDATE` locks the order and checks it has room at once (re-checked on the
-- row's latest version after any lock wait), where a `count(*)` in the same
-- statement would use a snapshot taken before the wait.
--
-- The count is kept by triggers, not by the application, so that it stays
-- exact whoever writes lines: during a rolling update, replicas that predate
-- this column keep inserting and deleting lines.
ALTER TABLE commandes
    ADD COLUMN nb_lignes INTEGER NOT NULL DEFAULT 0 CHECK (nb_lignes >= 0);

UPDATE commandes c
   SET nb_lignes = l.n
  FROM (SELECT commande_id, count(*) AS n FROM commandes_produits GROUP BY commande_id) l
 WHERE l.commande_id = c.id;

CREATE FUNCTION ordersys_count_lines() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE commandes SET nb_lignes = nb_lignes - 1 WHERE id = OLD.commande_id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        UPDATE commandes SET nb_lignes = nb_lignes + 1 WHERE id = NEW.commande_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER commandes_produits_counted
    AFTER INSERT OR DELETE ON commandes_produits
    FOR EACH ROW EXECUTE FUNCTION ordersys_count_lines();

CREATE TRIGGER commandes_produits_moved
    AFTER UPDATE OF commande_id ON commandes_produits
    FOR EACH ROW WHEN (OLD.commande_id IS DISTINCT FROM NEW.commande_id)
    EXECUTE FUNCTION ordersys_count_lines();
