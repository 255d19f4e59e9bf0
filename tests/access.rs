//! Black-box tests of access control against the real `toctou run` binary: bearer tokens
//! (from files and from the environment) on the OTLP receivers, the audit webhook and the
//! API; TLS on every listener and client certificates on the receivers, with a throwaway CA
//! made here; the loopback rule of `run`, `collector` and `correlator`; and no token in the
//! log or on /metrics.

mod common;

use common::{kinds, metric, testdata, Toctou};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Identity};

const INGEST_OLD: &str = "ingest-old-9f8e7d6c5b4a3928";
const INGEST_NEW: &str = "ingest-new-1a2b3c4d5e6f7081";
const AUDIT: &str = "audit-only-55aa66bb77cc88dd";
const API: &str = "api-reader-0c1d2e3f4a5b6c7d";
const WRONG: &str = "not-a-token-0000000000000000";

/// A directory of this test process's own for token files and certificates.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toctou-access-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A scenario's OTLP JSON lines with the path each goes to.
fn scenario(name: &str) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(testdata(&format!("testdata/scenarios/{name}/input.jsonl")))
        .unwrap();
    text.lines()
        .map(|l| {
            let path = if l.contains("\"resourceSpans\"") {
                "/v1/traces"
            } else if l.contains("\"resourceLogs\"") {
                "/v1/logs"
            } else {
                "/v1/k8s-audit"
            };
            (path, l.to_string())
        })
        .collect()
}

fn expected_kinds(name: &str) -> std::collections::BTreeMap<String, usize> {
    let text = std::fs::read_to_string(testdata(&format!(
        "testdata/scenarios/{name}/expected.jsonl"
    )))
    .unwrap();
    let findings: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    kinds(&findings)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.expect("request sent")
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

/// Exports one OTLP JSON line over gRPC on `channel`.
async fn grpc_export(
    channel: &Channel,
    path: &str,
    line: &str,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    if path == "/v1/traces" {
        let request = toctou_collector::traces_from_json(line.as_bytes()).unwrap();
        TraceServiceClient::new(channel.clone())
            .export(with_token(request, token))
            .await
            .map(drop)
    } else {
        let request = toctou_collector::logs_from_json(line.as_bytes()).unwrap();
        LogsServiceClient::new(channel.clone())
            .export(with_token(request, token))
            .await
            .map(drop)
    }
}

async fn plain_channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connection")
}

/// Polls `url` (the findings API) until the findings have `want`'s kinds.
async fn wait_for_kinds(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    want: &std::collections::BTreeMap<String, usize>,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body: Value = get(client, url, token).await.json().await.unwrap();
        let findings = body["findings"].as_array().cloned().unwrap_or_default();
        if &kinds(&findings) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "findings {:?}, want {want:?}; log:\n{}",
            kinds(&findings),
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn events_accepted(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("toctou_events_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [INGEST_OLD, INGEST_NEW, AUDIT, API, WRONG] {
        assert!(!text.contains(secret), "{what} shows a token:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_files_guard_the_receivers_the_webhook_and_the_api() {
    let dir = scratch("files");
    // Two ingest tokens (a rotation under way), comments and blank lines.
    let ingest = write(
        &dir,
        "ingest.tokens",
        &format!("# rotated in on Monday\n{INGEST_NEW}\n\n# goes on Friday\n{INGEST_OLD}\n"),
    );
    let api = write(&dir, "api.tokens", &format!("{API}\n"));
    let toctou = Toctou::start_env(
        &[
            "--ingest-token-file",
            &ingest,
            "--api-token-file",
            &api,
            "--allowed-lateness",
            "200ms",
        ],
        // Debug: the refusals are logged there; none may show a token.
        &[("TOCTOU_LOG", "debug")],
    );
    let client = reqwest::Client::new();
    let channel = plain_channel(toctou.grpc).await;
    let lines = scenario("stale_check_versions");

    // Refused, over both transports, without a token and with a wrong one: 401 with the
    // challenge, UNAUTHENTICATED.
    let mut refused = 0;
    for token in [None, Some(WRONG), Some(API)] {
        for (path, line) in &lines {
            let resp = post(&client, &toctou.http_url(path), token, line)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"toctou\""
            );
            // Refused before the body was read: the client must not reuse the connection.
            assert_eq!(resp.headers()["connection"], "close");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], 16, "{body}");
            let status = grpc_export(&channel, path, line, token).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            refused += 2;
        }
        // The webhook takes the ingest tokens when it has none of its own.
        let resp = post(&client, &toctou.http_url("/v1/k8s-audit"), token, "{}")
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        refused += 1;
    }
    let metrics = get(&client, &toctou.api_url("/metrics"), Some(API))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(events_accepted(&metrics), 0.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "toctou_rejected_total{reason=\"unauthenticated\"}"
        ),
        refused as f64
    );
    // Refused before the body was read: not a byte counted as received.
    for transport in ["grpc", "http"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("toctou_received_bytes_total{{transport=\"{transport}\"}}")
            ),
            0.0
        );
    }

    // The API: every route but /healthz wants the API token (an ingest token is not one);
    // a browser's basic auth with the token as password is taken.
    let mut api_refused = 0;
    for path in ["/api/v1/findings", "/api/v1/summary", "/metrics", "/"] {
        for token in [None, Some(WRONG), Some(INGEST_NEW)] {
            let resp = get(&client, &toctou.api_url(path), token).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
            let challenges: Vec<&str> = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(
                challenges,
                ["Bearer realm=\"toctou\"", "Basic realm=\"toctou\""]
            );
            api_refused += 1;
        }
        let resp = get(&client, &toctou.api_url(path), Some(API)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let resp = client
        .get(toctou.api_url("/"))
        .basic_auth("anyone", Some(API))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(&client, &toctou.api_url("/healthz"), None).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // With the tokens: spans over gRPC with the new token, records over HTTP with the old.
    for (path, line) in &lines {
        if *path == "/v1/traces" {
            grpc_export(&channel, path, line, Some(INGEST_NEW))
                .await
                .unwrap();
        } else {
            let resp = post(&client, &toctou.http_url(path), Some(INGEST_OLD), line)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    wait_for_kinds(
        &client,
        &toctou.api_url("/api/v1/findings"),
        Some(API),
        &expected_kinds("stale_check_versions"),
        || toctou.log(),
    )
    .await;

    let metrics = get(&client, &toctou.api_url("/metrics"), Some(API))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(events_accepted(&metrics), lines.len() as f64, "{metrics}");
    assert_eq!(
        metric(&metrics, "toctou_api_unauthenticated_total"),
        api_refused as f64
    );
    assert_no_secret("/metrics", &metrics);
    let log = toctou.log();
    assert!(log.contains("invalid bearer token"), "{log}");
    assert_no_secret("the log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_environment_and_a_webhook_token_of_its_own() {
    let toctou = Toctou::start_env(
        &["--allowed-lateness", "200ms"],
        &[
            (
                "TOCTOU_INGEST_TOKENS",
                &format!("{INGEST_OLD},{INGEST_NEW}"),
            ),
            ("TOCTOU_AUDIT_TOKENS", AUDIT),
        ],
    );
    let client = reqwest::Client::new();
    let channel = plain_channel(toctou.grpc).await;
    let lines = scenario("k8s_audit_stale_check");
    assert!(lines.iter().any(|(p, _)| *p == "/v1/k8s-audit"));

    // Each route group takes its own tokens only.
    for (path, line) in &lines {
        let wrong_group = if *path == "/v1/k8s-audit" {
            INGEST_NEW
        } else {
            AUDIT
        };
        for token in [None, Some(WRONG), Some(wrong_group)] {
            let resp = post(&client, &toctou.http_url(path), token, line)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
        }
    }
    let status = grpc_export(&channel, "/v1/traces", &lines[0].1, Some(AUDIT))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(events_accepted(&toctou.metrics().await), 0.0);

    for (path, line) in &lines {
        let token = if *path == "/v1/k8s-audit" {
            AUDIT
        } else {
            INGEST_OLD
        };
        let resp = post(&client, &toctou.http_url(path), Some(token), line)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // No API tokens: on loopback the API stays open.
    wait_for_kinds(
        &client,
        &toctou.api_url("/api/v1/findings"),
        None,
        &expected_kinds("k8s_audit_stale_check"),
        || toctou.log(),
    )
    .await;
    let metrics = toctou.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "toctou_rejected_total{reason=\"unauthenticated\"}"
        ),
        (lines.len() * 3 + 1) as f64
    );
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("the log", &toctou.log());
}

/// A throwaway certificate authority and what it issues.
struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A certificate and its key, both PEM.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn https_client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_listener() {
    let dir = scratch("tls");
    let pki = Pki::new("toctou test CA");
    let (cert, key) = pki.issue(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let cert_file = write(&dir, "server.pem", &cert);
    let key_file = write(&dir, "server.key", &key);
    let ca = pki.ca.pem();
    let toctou = Toctou::start(&[
        "--tls-cert",
        &cert_file,
        "--tls-key",
        &key_file,
        "--allowed-lateness",
        "200ms",
    ]);
    let https = https_client(&ca, None);
    let lines = scenario("stale_check_versions");

    // Plain HTTP to a TLS port gets no answer; a client that does not trust the CA neither.
    let plain = reqwest::Client::new();
    assert!(
        post(&plain, &toctou.http_url("/v1/traces"), None, &lines[0].1)
            .await
            .is_err()
    );
    let untrusting = https_client(&Pki::new("another CA").ca.pem(), None);
    let url = format!("https://127.0.0.1:{}/v1/traces", toctou.http.port());
    assert!(post(&untrusting, &url, None, &lines[0].1).await.is_err());
    assert!(plain.get(toctou.api_url("/healthz")).send().await.is_err());

    // Spans over gRPC with TLS, records over HTTPS, findings read over HTTPS.
    let channel = tls_channel(toctou.grpc, &ca, None).await.unwrap();
    for (path, line) in &lines {
        if *path == "/v1/traces" {
            grpc_export(&channel, path, line, None).await.unwrap();
        } else {
            let url = format!("https://127.0.0.1:{}{path}", toctou.http.port());
            let resp = post(&https, &url, None, line).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    let api = format!("https://localhost:{}", toctou.api.port());
    wait_for_kinds(
        &https,
        &format!("{api}/api/v1/findings"),
        None,
        &expected_kinds("stale_check_versions"),
        || toctou.log(),
    )
    .await;
    let metrics = get(&https, &format!("{api}/metrics"), None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(events_accepted(&metrics), lines.len() as f64);
    // The three refused connections above, counted.
    assert_eq!(
        common::metric(
            &metrics,
            "toctou_tls_handshake_failures_total{reason=\"error\"}"
        ),
        3.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_on_the_receivers() {
    let dir = scratch("mtls");
    let pki = Pki::new("toctou test CA");
    let (cert, key) = pki.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) =
        pki.issue(&["app.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue = Pki::new("someone else's CA");
    let (rogue_cert, rogue_key) =
        rogue.issue(&["app.example"], ExtendedKeyUsagePurpose::ClientAuth);
    let ca = pki.ca.pem();
    let toctou = Toctou::start(&[
        "--tls-cert",
        &write(&dir, "server.pem", &cert),
        "--tls-key",
        &write(&dir, "server.key", &key),
        "--tls-client-ca",
        &write(&dir, "clients.pem", &ca),
        "--allowed-lateness",
        "200ms",
    ]);
    let lines = scenario("stale_check_versions");
    let url = |path: &str| format!("https://localhost:{}{path}", toctou.http.port());

    // No client certificate, or one of another CA: the handshake fails, nothing is taken.
    for identity in [None, Some((rogue_cert.as_str(), rogue_key.as_str()))] {
        let client = https_client(&ca, identity);
        assert!(post(&client, &url("/v1/traces"), None, &lines[0].1)
            .await
            .is_err());
        let refused = match tls_channel(toctou.grpc, &ca, identity).await {
            Err(_) => true,
            Ok(channel) => grpc_export(&channel, "/v1/traces", &lines[0].1, None)
                .await
                .is_err(),
        };
        assert!(refused, "gRPC with {:?}", identity.map(|_| "rogue"));
    }
    // The API asks for no client certificate.
    let api = format!("https://localhost:{}", toctou.api.port());
    let no_identity = https_client(&ca, None);
    let metrics = get(&no_identity, &format!("{api}/metrics"), None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(events_accepted(&metrics), 0.0);

    let good = Some((client_cert.as_str(), client_key.as_str()));
    let client = https_client(&ca, good);
    let channel = tls_channel(toctou.grpc, &ca, good).await.unwrap();
    for (path, line) in &lines {
        if *path == "/v1/traces" {
            grpc_export(&channel, path, line, None).await.unwrap();
        } else {
            let resp = post(&client, &url(path), None, line).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    wait_for_kinds(
        &no_identity,
        &format!("{api}/api/v1/findings"),
        None,
        &expected_kinds("stale_check_versions"),
        || toctou.log(),
    )
    .await;
}

/// Runs `toctou <args>` expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "toctou {args:?} started:\n{stderr}");
    stderr
}

#[test]
fn non_loopback_listeners_need_authentication_or_the_explicit_flag() {
    let run = |grpc: &'static str, http: &'static str, api: &'static str| {
        vec![
            "run",
            "--otlp-grpc-addr",
            grpc,
            "--otlp-http-addr",
            http,
            "--api-addr",
            api,
        ]
    };
    let loopback = "127.0.0.1:0";
    let err = refused(&run("0.0.0.0:0", loopback, loopback), &[]);
    assert!(
        err.contains("OTLP/gRPC on 0.0.0.0:0: set --ingest-token-file"),
        "{err}"
    );
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(!err.contains("API on"), "{err}");
    let err = refused(&run(loopback, "[::]:0", "0.0.0.0:0"), &[]);
    assert!(
        err.contains("OTLP/HTTP and audit webhook on [::]:0"),
        "{err}"
    );
    assert!(
        err.contains("API on 0.0.0.0:0: set --api-token-file"),
        "{err}"
    );
    assert!(!err.contains("OTLP/gRPC on"), "{err}");
    // Audit tokens alone leave the OTLP routes of the same listener open.
    let err = refused(
        &run(loopback, "0.0.0.0:0", loopback),
        &[("TOCTOU_AUDIT_TOKENS", AUDIT)],
    );
    assert!(
        err.contains("OTLP/HTTP and audit webhook on 0.0.0.0:0"),
        "{err}"
    );
    // A malformed token is refused by position, never echoed.
    let err = refused(
        &run(loopback, loopback, loopback),
        &[("TOCTOU_INGEST_TOKENS", "short-secret")],
    );
    assert!(
        err.contains("TOCTOU_INGEST_TOKENS, token 1: shorter than 16"),
        "{err}"
    );
    assert!(!err.contains("short-secret"), "{err}");
    // The distributed nodes follow the same rule, before asking Kafka anything.
    let err = refused(
        &[
            "collector",
            "--otlp-grpc-addr",
            "0.0.0.0:0",
            "--api-addr",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert!(err.contains("OTLP/gRPC on 0.0.0.0:0"), "{err}");
    assert!(err.contains("metrics on 0.0.0.0:0"), "{err}");
    let err = refused(&["correlator", "--api-addr", "0.0.0.0:0"], &[]);
    assert!(
        err.contains("metrics on 0.0.0.0:0: set --api-token-file"),
        "{err}"
    );

    // The explicit flag (or its variable) lets them start, with a warning.
    let everywhere = run("0.0.0.0:0", "0.0.0.0:0", "0.0.0.0:0");
    let args: Vec<String> = everywhere.iter().map(|a| a.to_string()).collect();
    let mut with_flag = args.clone();
    with_flag.push("--allow-unauthenticated".into());
    for (args, env) in [
        (with_flag, vec![]),
        (args.clone(), vec![("TOCTOU_ALLOW_UNAUTHENTICATED", "true")]),
    ] {
        let node = common::process::Node::start_env(&args, &env, "toctou run listening");
        let log = node.log();
        assert!(log.contains("listening without authentication"), "{log}");
    }
    // Tokens for every listener: it starts, and warns of nothing.
    let node = common::process::Node::start_env(
        &args,
        &[
            ("TOCTOU_INGEST_TOKENS", INGEST_OLD),
            ("TOCTOU_API_TOKENS", API),
        ],
        "toctou run listening",
    );
    assert!(
        !node.log().contains("without authentication"),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_escapes_what_it_echoes() {
    let toctou = Toctou::start(&[]);
    let client = reqwest::Client::new();
    for (query, echoed) in [
        ("kind=%3Cscript%3Ealert(1)%3C/script%3E", true),
        ("since=%3Cimg%20src=x%20onerror=alert(1)%3E", true),
        ("limit=%3Cb%3E&kind=%3C", false),
    ] {
        let resp = get(
            &client,
            &toctou.api_url(&format!("/api/v1/findings?{query}")),
            None,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains('<') && !body.contains('>'),
            "{query}: {body}"
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        // Escaped, not dropped: the parsed message still quotes the request.
        let message = parsed["error"].as_str().unwrap();
        assert_eq!(message.contains("<"), echoed, "{body}");
    }
}

/// `toctou demo` exports with its token (gRPC metadata, through the OpenTelemetry SDK) and
/// reads the findings API with the API token: against a `toctou run` that wants both, it
/// finds exactly the races that happened, and nothing was refused.
#[test]
fn the_demo_sends_its_tokens_to_a_secured_run() {
    let dir = scratch("demo");
    let toctou = Toctou::start(&[
        "--ingest-token-file",
        &write(&dir, "ingest.tokens", INGEST_NEW),
        "--api-token-file",
        &write(&dir, "api.tokens", API),
        "--pair-ttl",
        "2s",
        "--allowed-lateness",
        "2s",
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args([
            "demo",
            "--endpoint",
            &format!("http://{}", toctou.grpc),
            "--api",
            &toctou.api_url(""),
            "--duration",
            "3s",
            "--pair-ttl",
            "2s",
            "--allowed-lateness",
            "2s",
        ])
        .env("TOCTOU_LOG", "warn")
        .env("TOCTOU_TOKEN", INGEST_NEW)
        .env("TOCTOU_API_TOKEN", API)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("toctou found exactly the races that happened."),
        "{stdout}"
    );
    let metrics = tokio::runtime::Runtime::new().unwrap().block_on(async {
        get(
            &reqwest::Client::new(),
            &toctou.api_url("/metrics"),
            Some(API),
        )
        .await
        .text()
        .await
        .unwrap()
    });
    assert!(events_accepted(&metrics) > 0.0);
    assert_eq!(
        metric(
            &metrics,
            "toctou_rejected_total{reason=\"unauthenticated\"}"
        ),
        0.0
    );
    assert_eq!(metric(&metrics, "toctou_api_unauthenticated_total"), 0.0);
    assert_no_secret("the demo's output", &format!("{stdout}{stderr}"));
}
