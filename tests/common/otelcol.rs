//! A real OpenTelemetry Collector in front of a `toctou run`, as deployments put one: the
//! OTLP receiver (gRPC, on a free loopback port), the batch processor and the OTLP exporter
//! into toctou's gRPC receiver, for traces and logs. The binary is the one `scripts/peers`
//! builds with the Collector's builder (bench/peers/otelcol-builder.yaml); a test fails,
//! never skips, when it is missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Collector {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    /// Its OTLP/gRPC receiver.
    pub grpc: SocketAddr,
}

/// The Collector binary: TOCTOU_TEST_OTELCOL, else the one `scripts/peers` built.
fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TOCTOU_TEST_OTELCOL") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers");
    let out = Command::new(script)
        .arg("otelcol")
        .output()
        .expect("running scripts/peers otelcol");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        out.status.success() && path.is_file(),
        "no OpenTelemetry Collector at {}: run `scripts/peers install otelcol` (./scripts/test \
         does)",
        path.display()
    );
    path
}

impl Collector {
    /// Starts a Collector exporting to `toctou_grpc` and waits until its receiver accepts.
    pub fn start(toctou_grpc: SocketAddr) -> Collector {
        let grpc = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = std::env::temp_dir();
        let stem = format!("toctou-otelcol-{}-{}", std::process::id(), grpc.port());
        let config = dir.join(format!("{stem}.yaml"));
        let log = dir.join(format!("{stem}.log"));
        // The batch processor and the exporter's queue and retries at their defaults, as a
        // deployment leaves them; its own telemetry off (it would bind a port).
        std::fs::write(
            &config,
            format!(
                "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {grpc}
processors:
  batch:
exporters:
  otlp_grpc:
    endpoint: {toctou_grpc}
    tls:
      insecure: true
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp_grpc]
    logs:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp_grpc]
"
            ),
        )
        .unwrap();
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the OpenTelemetry Collector");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(grpc).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the Collector exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Collector did not listen on {grpc} within 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector {
            child,
            config,
            log,
            grpc,
        }
    }

    /// What it logged (warnings and errors: export failures, refused data).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
