DROP TABLE partitions_stock;
DROP TABLE workers_stock;
