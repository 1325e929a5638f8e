-- Stock partitions (amqp.stock_partitions > 0): which worker consumes
-- which partition queue, as leases that expire unless renewed. A worker
-- renews its own, and takes its share of the free or expired ones, every
-- fifth of worker.partition_lease_ms; its share is the partitions divided
-- by the workers that renewed their membership lately. Times are the
-- database's own clock, the one clock every worker shares.
--
-- A lease is for speed, not for correctness: two workers applying one
-- partition for a moment (a frozen worker waking up after it expired) wait
-- on each other's rows, and each change is still applied once (the
-- processed-id ledger and the line versions see to it).
CREATE TABLE workers_stock (
    worker    UUID        PRIMARY KEY,
    expire_le TIMESTAMPTZ NOT NULL
);

CREATE TABLE partitions_stock (
    partition SMALLINT    PRIMARY KEY CHECK (partition >= 0),
    worker    UUID,
    expire_le TIMESTAMPTZ
);

GRANT SELECT, INSERT, UPDATE, DELETE ON workers_stock, partitions_stock TO ordersys_worker;
