-- Inference's risks (toctou_infer::risks): endpoints whose requests read a table and then
-- write it with nothing protecting the pair, per service, endpoint, kind (`lost_update`,
-- `check_then_insert`, `check_then_delete`) and table. They say an endpoint can race, not
-- that it did.
--
-- `toctou run` writes them at most once a minute, and at shutdown: one row for each risk
-- whose count grew, `requests` being the requests counted since that risk's previous row
-- (never the running total), so that a sum over any time range is right, across restarts
-- too. `counted_at` (seconds, for partitions and ranges) plus the exact nanoseconds is when
-- the row was made, on toctou's clock: the interval its requests were counted in ends there.
-- The example trace and statements are the risk's first request's, as received (truncated).
--
-- ReplacingMergeTree keyed by the risk and its row's exact time: a batch retried after an
-- ambiguous failure writes the same keys and merges collapse it, while the rows of two
-- writes differ in `counted_at_ns` and both stay. Until a merge has run, sum over
-- `LIMIT 1 BY service, endpoint, kind, table_name, counted_at_ns` rather than `FINAL`.
CREATE TABLE IF NOT EXISTS risks
(
    service String,
    endpoint String,
    kind String,
    table_name String,
    requests UInt64,
    example_trace_id String,
    read_statement String,
    write_statement String,
    counted_at DateTime,
    counted_at_ns UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(counted_at)
ORDER BY (service, counted_at, endpoint, kind, table_name, counted_at_ns);
