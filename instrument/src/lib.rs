//! Check spans, use spans and audit records for toctou (work in progress).
