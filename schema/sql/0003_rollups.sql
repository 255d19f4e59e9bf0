-- Per-minute rollups by service, operation, resource type and finding kind, filled by
-- materialized views from `events` and `findings`: the numerators and denominators of
-- every SLI (the queries are in schema/sql/README.md).
--
-- Event rows have kind = ''; finding rows carry their kind. Counts are sum states and the
-- two latency distributions quantile states, read with sumMerge / quantilesMerge.
-- Each view names every column of the table, with empty states for the other view's
-- columns: 18.16 does not fill a `TO` table's missing columns with defaults.
-- Materialized views see each inserted block, so a batch inserted twice is counted twice
-- here even though the base tables collapse it: the rollups are at-least-once.
CREATE TABLE IF NOT EXISTS rollup_minute
(
    minute DateTime,
    service String,
    operation String,
    resource_type String,
    kind String,
    checks AggregateFunction(sum, UInt64),
    checks_cache AggregateFunction(sum, UInt64),
    uses AggregateFunction(sum, UInt64),
    uses_failed AggregateFunction(sum, UInt64),
    uses_conflict AggregateFunction(sum, UInt64),
    uses_keyed AggregateFunction(sum, UInt64),
    audits AggregateFunction(sum, UInt64),
    findings AggregateFunction(sum, UInt64),
    findings_cache AggregateFunction(sum, UInt64),
    findings_keyed AggregateFunction(sum, UInt64),
    race_window_ns AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt64),
    detection_latency_ns AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (service, minute, operation, resource_type, kind);

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_events_mv TO rollup_minute AS
SELECT
    toStartOfMinute(event_time) AS minute,
    service,
    operation,
    resource_type,
    '' AS kind,
    sumState(toUInt64(type = 'check')) AS checks,
    sumState(toUInt64(type = 'check' AND ifNull(check_source, '') = 'cache')) AS checks_cache,
    sumState(toUInt64(type = 'use')) AS uses,
    sumState(toUInt64(type = 'use' AND outcome = 'error')) AS uses_failed,
    sumState(toUInt64(type = 'use' AND outcome = 'conflict')) AS uses_conflict,
    sumState(toUInt64(type = 'use' AND isNotNull(idempotency_key))) AS uses_keyed,
    sumState(toUInt64(type = 'audit')) AS audits,
    sumState(toUInt64(0)) AS findings,
    sumState(toUInt64(0)) AS findings_cache,
    sumState(toUInt64(0)) AS findings_keyed,
    quantilesStateIf(0.5, 0.9, 0.99)(toUInt64(0), 0) AS race_window_ns,
    quantilesStateIf(0.5, 0.9, 0.99)(toUInt64(0), 0) AS detection_latency_ns
FROM events
GROUP BY minute, service, operation, resource_type;

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_findings_mv TO rollup_minute AS
SELECT
    toStartOfMinute(event_time) AS minute,
    service,
    operation,
    resource_type,
    kind,
    sumState(toUInt64(0)) AS checks,
    sumState(toUInt64(0)) AS checks_cache,
    sumState(toUInt64(0)) AS uses,
    sumState(toUInt64(0)) AS uses_failed,
    sumState(toUInt64(0)) AS uses_conflict,
    sumState(toUInt64(0)) AS uses_keyed,
    sumState(toUInt64(0)) AS audits,
    sumState(toUInt64(1)) AS findings,
    sumState(toUInt64(ifNull(check_source, '') = 'cache')) AS findings_cache,
    sumState(toUInt64(isNotNull(idempotency_key))) AS findings_keyed,
    quantilesStateIf(0.5, 0.9, 0.99)(ifNull(race_window_ns, 0), isNotNull(race_window_ns)) AS race_window_ns,
    -- Clamped at zero: an event time ahead of the detecting clock (skew) is not a latency.
    quantilesState(0.5, 0.9, 0.99)(toUInt64(greatest(detected_at_ns, event_time_ns) - event_time_ns)) AS detection_latency_ns
FROM findings
GROUP BY minute, service, operation, resource_type, kind;
