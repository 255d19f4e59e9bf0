-- Findings: one row per finding with every field of toctou_schema::Finding (the findings
-- API's JSON form), so nothing is lost between the API and storage.
--
-- ReplacingMergeTree keyed by (service, event_time, id): every part of the key is decided
-- by the finding's input events, never by arrival, so a retried or replayed batch writes
-- the same key and merges collapse it to one row. Until a merge has run, readers count
-- `uniqExact(id)` or use `LIMIT 1 BY id` rather than `FINAL`.
--
-- The sort key answers "what broke for service X in this hour" with a primary-key range;
-- `findings_lookup` below answers "this finding" and "this trace".
-- Optional fields are Nullable (absent and empty differ in the API); the intervening audit
-- records are a Nested column, one array per AuditRef field, in the API's order.
CREATE TABLE IF NOT EXISTS findings
(
    id String,
    kind String,
    severity String,
    service String,
    operation String,
    resource String,
    resource_type String,
    request_id String,
    trace_id String,
    check_span_id String,
    check_time_ns Nullable(UInt64),
    use_span_id String,
    use_time_ns Nullable(UInt64),
    race_window_ns Nullable(UInt64),
    checked_version Nullable(String),
    used_version Nullable(String),
    check_source Nullable(String),
    idempotency_key Nullable(String),
    policy Nullable(String),
    policy_version Nullable(String),
    intervening Nested
    (
        action String,
        resource String,
        version Nullable(String),
        request_id Nullable(String),
        actor Nullable(String),
        time_ns UInt64
    ),
    prior_use_request_id Nullable(String),
    prior_use_trace_id Nullable(String),
    prior_use_span_id Nullable(String),
    prior_use_time_ns Nullable(UInt64),
    reason String,
    event_time DateTime,
    event_time_ns UInt64,
    detected_at DateTime,
    detected_at_ns UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (service, event_time, id);

-- The secondary way in by finding id or trace id (neither leads the findings sort key, and
-- data-skipping indices are newer than 18.16): each finding is listed under both keys with
-- the coordinates of its row, which a second query then reads by primary key.
CREATE TABLE IF NOT EXISTS findings_lookup
(
    key String,
    id String,
    service String,
    event_time DateTime
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (key, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS findings_lookup_mv TO findings_lookup AS
SELECT key, id, service, event_time
FROM findings
ARRAY JOIN [id, trace_id] AS key
WHERE key != '';
