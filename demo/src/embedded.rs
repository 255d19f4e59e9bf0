//! The `toctou run` the demo starts in its own process when nothing answers at its endpoint,
//! so that `toctou demo` alone shows races found: on loopback ports the OS picks, with the
//! same code and flags as `toctou run`, findings written to a file rather than stdout.
//!
//! This crate does not know the server: the binary, which has both, hands the demo a
//! [`StartRun`] (so neither crate imports the other).

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the embedded server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how the embedded `toctou run` listens and correlates.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    pub findings_file: PathBuf,
    pub pair_ttl: Duration,
    pub allowed_lateness: Duration,
}

/// Starts a `toctou run` in this process as a task that serves until its second argument
/// resolves, then drains and ends (as on SIGTERM).
pub type StartRun =
    Arc<dyn Fn(RunSpec, BoxFuture<'static, ()>) -> Result<JoinHandle<Result<()>>> + Send + Sync>;

pub struct Embedded {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    pub findings_file: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

/// Whether something accepts TCP connections at the endpoint URL's host and port.
pub async fn answers(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Starts `toctou run` with the given correlator timing and waits until it answers.
pub async fn start(
    start_run: &StartRun,
    pair_ttl: Duration,
    allowed_lateness: Duration,
) -> Result<Embedded> {
    let [grpc, http, api] = free_ports()?;
    let findings_file = std::env::temp_dir().join(format!(
        "toctou-demo-findings-{}-{}.jsonl",
        std::process::id(),
        api.port()
    ));
    let spec = RunSpec {
        grpc,
        http,
        api,
        findings_file: findings_file.clone(),
        pair_ttl,
        allowed_lateness,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = start_run(
        spec,
        Box::pin(async {
            let _ = stopped.await;
        }),
    )
    .context("starting the embedded toctou run")?;
    let deadline = Instant::now() + START_TIMEOUT;
    let health = format!("http://{api}/healthz");
    loop {
        if task.is_finished() {
            let result = task.await.context("the embedded toctou run")?;
            result.context("the embedded toctou run")?;
            bail!("the embedded toctou run stopped at start-up");
        }
        if let Ok(r) = reqwest::get(&health).await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the embedded toctou run did not answer at {health} within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Embedded {
        grpc,
        http,
        api,
        findings_file,
        stop,
        task,
    })
}

impl Embedded {
    /// Shuts the server down the way SIGTERM does, and waits for it.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("joining the embedded toctou run")?
    }
}

/// Three loopback ports free right now. They are released before the server binds them,
/// so another process could take one in between; the server then fails to start with the
/// address in its error, and nothing is silently sent elsewhere.
fn free_ports() -> Result<[SocketAddr; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0"),
        TcpListener::bind("127.0.0.1:0"),
        TcpListener::bind("127.0.0.1:0"),
    ];
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); 3];
    for (slot, l) in addrs.iter_mut().zip(&listeners) {
        let l = l
            .as_ref()
            .map_err(|e| anyhow::anyhow!("finding a free loopback port: {e}"))?;
        *slot = l.local_addr()?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_answers_at_a_closed_port_and_a_listener_answers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        assert!(answers(&format!("http://{open}")).await);
        drop(l);
        assert!(!answers(&format!("http://{open}")).await);
        assert!(!answers("not a url").await);
    }
}
