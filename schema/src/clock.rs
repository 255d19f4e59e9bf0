//! Wall-clock time the way events carry it: nanoseconds since the Unix epoch.

/// Now, in nanoseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
