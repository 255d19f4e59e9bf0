//! toctou's ClickHouse storage: where the server is, the versioned schema, the rows, and
//! the batched sink.
//!
//! # Layout
//! - this file: [`ClickhouseConfig`] (URL, user, password, database; the binary fills it
//!   from its flags and environment) and the clients built from it.
//! - [`migrations`]: the numbered SQL files of `schema/sql/`, embedded, and applying them
//!   idempotently with a record of versions.
//! - [`retention`]: dropping daily partitions past each table's retention.
//! - [`rows`]: the RowBinary rows of `findings` and `events`, mapped from the schema types,
//!   and of inference's `risks`.
//! - [`inserts`]: the sink's inserts as SQL text with example rows, for `--print-sql`.
//! - [`sink`]: the batched, retrying, bounded writer of `toctou run --clickhouse-url` and
//!   of the Kafka correlators. Its counters, and the collector that serves them on
//!   `/metrics`, are [`sink::metrics`].
//!
//! Every statement sent here must be accepted by Debian's ClickHouse 18.16 and by current
//! releases; `toctou migrate --print-sql` prints them all so the tests run each on both.
//! That is also why the client reads plain `RowBinary` (18.16 predates the typed header
//! format the crate validates rows with) and asks for no response compression.

pub mod inserts;
pub mod migrations;
pub mod retention;
pub mod rows;
pub mod sink;

use std::fmt;

/// Where ClickHouse is and who to be there.
#[derive(Clone)]
pub struct ClickhouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`. Credentials in it
    /// (`http://user:password@host:8123`) take the place of `user` and `password`.
    pub url: Option<String>,
    pub user: String,
    pub password: String,
    /// The database holding toctou's tables.
    pub database: String,
}

/// The one thing a configuration can lack.
#[derive(Debug, thiserror::Error)]
#[error("--clickhouse-url (or TOCTOU_CLICKHOUSE_URL) is required")]
pub struct MissingUrl;

/// By hand so that the password never reaches a log line or an error message.
impl fmt::Debug for ClickhouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickhouseConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("database", &self.database)
            .finish()
    }
}

impl ClickhouseConfig {
    /// The URL, which `toctou migrate` cannot do without.
    pub fn require_url(&self) -> Result<&str, MissingUrl> {
        self.url.as_deref().ok_or(MissingUrl)
    }
    /// The URL as it may be shown: in a log line or an error message.
    pub fn shown_url(&self) -> String {
        redact_url(self.url.as_deref().unwrap_or_default())
    }

    /// A client for toctou's database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client for the server as a whole (its `default` database), to create ours.
    pub fn server_client(&self) -> clickhouse::Client {
        // The client gets the URL without its credentials: they go in headers, and cannot
        // reach an error message that quotes the URL.
        let url = Credentials::split(self.url.as_deref().unwrap_or_default());
        clickhouse::Client::default()
            .with_url(&url.url)
            .with_user(url.user.as_deref().unwrap_or(&self.user))
            .with_password(url.password.as_deref().unwrap_or(&self.password))
            .with_compression(clickhouse::Compression::None)
            .with_validation(false)
    }
}

/// A URL taken apart into the address and the `user:password@` before the host.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    url: String,
    user: Option<String>,
    password: Option<String>,
}

impl Credentials {
    fn split(url: &str) -> Credentials {
        let Some((start, end)) = userinfo(url) else {
            return Credentials {
                url: url.to_owned(),
                user: None,
                password: None,
            };
        };
        let info = &url[start..end];
        let (user, password) = match info.split_once(':') {
            Some((u, p)) => (u, Some(percent_decode(p))),
            None => (info, None),
        };
        Credentials {
            url: format!("{}{}", &url[..start], &url[end + 1..]),
            user: Some(percent_decode(user)),
            password,
        }
    }
}

/// The byte range of `user[:password]` in `scheme://user[:password]@host...`, without '@'.
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    // The last '@': a password may hold an unencoded one.
    let at = url[start..authority_end].rfind('@')? + start;
    Some((start, at))
}

/// `url` with any password in it (`user:password@`, or a `password=` query parameter,
/// which ClickHouse's HTTP interface also reads) replaced by `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let mut out = match userinfo(url) {
        Some((start, at)) => match url[start..at].find(':') {
            Some(colon) => format!("{}<redacted>{}", &url[..start + colon + 1], &url[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}=<redacted>")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

/// `%XX` escapes decoded; anything else, including a malformed escape, kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        for (url, shown) in [
            (
                "http://toctou:hunter2@127.0.0.1:8123",
                "http://toctou:<redacted>@127.0.0.1:8123",
            ),
            (
                "https://u:p%40ss@ch.example:8443/?database=x",
                "https://u:<redacted>@ch.example:8443/?database=x",
            ),
            // An unencoded '@' in the password: the host starts after the last one.
            ("http://u:a@b@host/", "http://u:<redacted>@host/"),
            ("u:hunter2@host:8123", "u:<redacted>@host:8123"),
            (
                "http://host:8123/?user=u&password=hunter2",
                "http://host:8123/?user=u&password=<redacted>",
            ),
            ("http://u@host:8123", "http://u@host:8123"),
            ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
            // An '@' after the authority is no credential.
            ("http://host/?q=a@b", "http://host/?q=a@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_leave_the_url_the_client_gets() {
        assert_eq!(
            Credentials::split("http://toc%3Atou:p%40ss:w@127.0.0.1:8123/"),
            Credentials {
                url: "http://127.0.0.1:8123/".into(),
                user: Some("toc:tou".into()),
                password: Some("p@ss:w".into()),
            }
        );
        assert_eq!(
            Credentials::split("http://reader@host"),
            Credentials {
                url: "http://host".into(),
                user: Some("reader".into()),
                password: None,
            }
        );
        assert_eq!(
            Credentials::split("http://host:8123"),
            Credentials {
                url: "http://host:8123".into(),
                user: None,
                password: None,
            }
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn debug_and_shown_url_hide_a_password_in_the_url() {
        let args = ClickhouseConfig {
            url: Some("http://toctou:hunter2@127.0.0.1:8123".into()),
            user: "default".into(),
            password: String::new(),
            database: "toctou".into(),
        };
        for shown in [format!("{args:?}"), args.shown_url()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("toctou:<redacted>@127.0.0.1:8123"),
                "{shown}"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let args = ClickhouseConfig {
            url: Some("http://127.0.0.1:8123".into()),
            user: "toctou".into(),
            password: "hunter2".into(),
            database: "toctou".into(),
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
