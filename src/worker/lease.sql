WITH args AS (
    SELECT $1::uuid AS me, $2::int AS partitions,
           statement_timestamp() + make_interval(secs => $3::bigint / 1000.0) AS until
), member AS (
    INSERT INTO workers_stock (worker, expire_le)
    SELECT me, until FROM args
    ON CONFLICT (worker) DO UPDATE SET expire_le = EXCLUDED.expire_le
    RETURNING 1
), forgotten AS (
    DELETE FROM workers_stock w USING args
     WHERE w.worker <> args.me AND w.expire_le < statement_timestamp() - interval '1 hour'
    RETURNING 1
), members AS (
    -- This worker and the others whose membership is alive; its rank
    -- among them by id.
    SELECT 1 + count(w.worker) AS n,
           count(w.worker) FILTER (WHERE w.worker < args.me) AS rank
      FROM args LEFT JOIN workers_stock w
        ON w.worker <> args.me AND w.expire_le > statement_timestamp()
     GROUP BY args.me
), share AS (
    -- The partitions dealt out evenly: the first (partitions mod n)
    -- workers by id take one more.
    SELECT args.partitions / members.n
           + CASE WHEN members.rank < args.partitions % members.n THEN 1 ELSE 0 END AS n
      FROM args, members
), held AS (
    SELECT p.partition, row_number() OVER (ORDER BY p.partition) AS rank
      FROM partitions_stock p, args
     WHERE p.worker = args.me AND p.partition < args.partitions
), renewed AS (
    UPDATE partitions_stock p SET expire_le = args.until
      FROM held, share, args
     WHERE p.partition = held.partition AND held.rank <= share.n AND p.worker = args.me
    RETURNING p.partition
), released AS (
    -- Beyond this worker's share (more workers now): free for the others.
    UPDATE partitions_stock p SET worker = NULL, expire_le = NULL
      FROM held, share, args
     WHERE p.partition = held.partition AND held.rank > share.n AND p.worker = args.me
    RETURNING p.partition
), free AS (
    -- Free or expired, up to the share: locked here, once (a locking CTE
    -- is never re-run), skipping those another worker is taking.
    SELECT f.partition FROM partitions_stock f, args a
     WHERE f.partition < a.partitions
       AND (f.worker IS NULL OR f.expire_le < statement_timestamp())
       AND f.worker IS DISTINCT FROM a.me
     ORDER BY f.partition
     LIMIT (SELECT greatest(share.n - (SELECT count(*) FROM held), 0) FROM share)
       FOR UPDATE OF f SKIP LOCKED
), taken AS (
    UPDATE partitions_stock p SET worker = args.me, expire_le = args.until
      FROM free, args
     WHERE p.partition = free.partition
    RETURNING p.partition
)
SELECT partition FROM renewed
UNION ALL
SELECT partition FROM taken
ORDER BY partition
