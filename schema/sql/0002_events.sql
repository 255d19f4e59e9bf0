-- The normalized check, use and audit events, for drill-down and replay.
--
-- One table for the three types: `type` is `check`, `use` or `audit`; the span fields are
-- empty/default on audit rows and the audit fields on span rows. `event_key` is the event's
-- identity at its source (trace id and span id for a span; the source id, else a content
-- hash, for an audit record), so a redelivered event has the same sort key and merges
-- collapse it. Times: `event_time` (seconds, for partitions and ranges) plus the exact
-- nanoseconds.
CREATE TABLE IF NOT EXISTS events
(
    type String,
    service String,
    operation String,
    resource String,
    resource_type String,
    version Nullable(String),
    request_id String,
    trace_id String,
    span_id String,
    event_key String,
    event_time DateTime,
    event_time_ns UInt64,
    start_ns UInt64,
    end_ns UInt64,
    actor String,
    decision String,
    check_source Nullable(String),
    policy Nullable(String),
    policy_version Nullable(String),
    idempotency_key Nullable(String),
    outcome String,
    permission_denied UInt8,
    audit_action String,
    source_id Nullable(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (service, event_time, type, event_key);
