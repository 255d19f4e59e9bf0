-- The record of applied migrations: one row per version, written after the version's
-- statements succeeded. Created before anything else on every `toctou migrate`, so it is
-- not itself a numbered migration. ReplacingMergeTree so that two migrators racing on a
-- fresh database leave one row per version once merged; readers group by version anyway.
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime
)
ENGINE = ReplacingMergeTree
ORDER BY version;
