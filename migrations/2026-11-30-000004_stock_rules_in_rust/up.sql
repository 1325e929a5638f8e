-- The stock rules now live in Rust (src/worker/plan.rs, a pure function
-- with its own tests) and the worker writes their result with set-based
-- statements (src/worker/store.rs). The PL/pgSQL function that held them
-- is gone.
DROP FUNCTION ordersys_apply_stock(UUID[], BIGINT[], BIGINT[], TEXT[], BIGINT[], INTEGER[],
                                   BIGINT[], BIGINT[], INTEGER[], TIMESTAMPTZ[], INTEGER);
