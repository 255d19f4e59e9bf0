//! The token a client of toctou sends, kept out of logs.

/// A token a client sends (`toctou demo`, `toctou loadgen`): kept out of `Debug` so that no
/// log of the parsed arguments shows it.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Never fails: clap quotes a value it refuses, so a malformed token is caught where it
/// becomes a header, by an error that does not contain it.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.trim().to_string()))
    }
}

impl Secret {
    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}
