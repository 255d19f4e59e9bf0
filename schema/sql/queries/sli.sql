-- The SLIs of the last hour, per service, from the per-minute rollups (schema/sql/README.md
-- defines each). Accepted by 18.16 and by current ClickHouse; tests run each on both and
-- check the numbers. Rates are rounded so both engines print the same digits.

-- M1 check-use mismatch rate, M3 duplicate rate, M4 authorization drift rate,
-- M5 partial creates, M6 idempotency conflict rate, M7 cache validation mismatches,
-- with the checks, uses and (derived) pairs they divide by.
SELECT
    service,
    sum(c) AS checks,
    sum(u) AS uses,
    greatest(toInt64(sum(u)) - toInt64(sumIf(f, kind = 'unchecked_use')), 0) AS pairs,
    round(sumIf(f, kind = 'stale_check') / greatest(pairs, 1), 4) AS m1_mismatch_rate,
    round(sumIf(f, kind = 'duplicate_use') / greatest(sum(u), 1), 4) AS m3_duplicate_rate,
    round(sumIf(f, kind = 'authz_drift') / greatest(pairs, 1), 4) AS m4_authz_drift_rate,
    sumIf(f, kind = 'partial_create') AS m5_partial_creates,
    round(sumIf(fk, kind = 'duplicate_use') / greatest(sum(uk), 1), 4) AS m6_idempotency_conflict_rate,
    sumIf(fc, kind = 'stale_check') AS m7_cache_mismatches,
    round(sumIf(fc, kind = 'stale_check') / greatest(sum(cc), 1), 4) AS m7_cache_mismatch_rate
FROM
(
    SELECT
        service,
        kind,
        sumMerge(checks) AS c,
        sumMerge(checks_cache) AS cc,
        sumMerge(uses) AS u,
        sumMerge(uses_keyed) AS uk,
        sumMerge(findings) AS f,
        sumMerge(findings_cache) AS fc,
        sumMerge(findings_keyed) AS fk
    FROM rollup_minute
    WHERE minute >= now() - 3600
    GROUP BY service, kind
)
GROUP BY service
ORDER BY service;

-- M2 reconcile failure rate: uses with toctou.operation = reconcile that failed.
SELECT
    service,
    sumMerge(uses) AS reconciles,
    sumMerge(uses_failed) AS failed,
    round(failed / greatest(reconciles, 1), 4) AS m2_reconcile_failure_rate
FROM rollup_minute
WHERE minute >= now() - 3600 AND operation = 'reconcile' AND kind = ''
GROUP BY service
ORDER BY service;

-- M8 race-window quantiles (p50, p90, p99, ns) of the findings with both a check and a
-- use, and M10 detection latency quantiles (ns), per service and kind (0 where there are
-- no values: an empty quantile is NaN, which the engines would cast differently).
SELECT
    service,
    kind,
    sumMerge(findings) AS findings,
    arrayMap(x -> if(isNaN(x), 0, toUInt64(x)), quantilesMerge(0.5, 0.9, 0.99)(race_window_ns)) AS m8_race_window_ns,
    arrayMap(x -> if(isNaN(x), 0, toUInt64(x)), quantilesMerge(0.5, 0.9, 0.99)(detection_latency_ns)) AS m10_detection_latency_ns
FROM rollup_minute
WHERE minute >= now() - 3600 AND kind != ''
GROUP BY service, kind
ORDER BY service, kind;

-- The rollups agree with the findings table: findings per service and kind, counted by
-- distinct id (correct before merges have collapsed redeliveries, without FINAL).
SELECT service, kind, uniqExact(id) AS findings
FROM findings
WHERE event_time >= now() - 3600
GROUP BY service, kind
ORDER BY service, kind;
