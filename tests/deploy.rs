//! Black-box tests of deploy/: the docker compose file and the Kubernetes manifests.
//!
//! No Docker engine or cluster runs here, so the files are checked with the schema tools
//! that ship those schemas (`scripts/validate-deploy`: check-jsonschema's compose-spec
//! schema, kubernetes-validate's Kubernetes schemas, strict), every repository path they
//! mount must exist, and the toctou commands they run are run for real with the
//! configuration they give (the compose file's commands and environment, hosts pointed at a
//! local Kafka broker and the test ClickHouse): topic creation, migration, a collector and a
//! correlator that start and serve the metrics the Prometheus rules read.

mod common;

use common::kafka::Broker;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_toctou");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn validate(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(root().join("scripts/validate-deploy"))
        .args(args)
        .args(files)
        .output()
        .expect("running scripts/validate-deploy (run 'scripts/validate-deploy install')");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/docker-compose.yml")).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    v.apply_merge().expect("merge keys");
    v
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).expect("manifest YAML");
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs the schema validators (scripts/validate-deploy): run ./scripts/test"
)]
#[test]
fn the_compose_file_follows_the_compose_spec() {
    let file = root().join("deploy/docker-compose.yml");
    let (ok, text) = validate(&["compose"], std::slice::from_ref(&file));
    assert!(ok, "{text}");
    // The validator bites: a misspelt key is refused.
    let bad = std::env::temp_dir().join(format!("toctou-bad-compose-{}.yml", std::process::id()));
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &bad,
        original.replacen("    expose: [\"8687\"]", "    exposes: [\"8687\"]", 1),
    )
    .unwrap();
    let (ok, text) = validate(&["compose"], std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!ok && text.contains("exposes"), "{text}");
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs the schema validators (scripts/validate-deploy): run ./scripts/test"
)]
#[test]
fn the_kubernetes_manifests_follow_the_kubernetes_schemas() {
    let files = manifests();
    let (ok, text) = validate(&["k8s"], &files);
    assert!(ok, "{text}");
    for kind in [
        "Deployment",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "ConfigMap",
        "Secret",
    ] {
        assert!(
            text.contains(&format!("{}/", kind.to_lowercase())),
            "no {kind} validated:\n{text}"
        );
    }
    // Strict: an unknown field is refused.
    let bad = std::env::temp_dir().join(format!("toctou-bad-k8s-{}.yaml", std::process::id()));
    let original = std::fs::read_to_string(root().join("deploy/k8s/correlator.yaml")).unwrap();
    std::fs::write(&bad, original.replacen("  replicas: 3", "  replica: 3", 1)).unwrap();
    let (ok, text) = validate(&["k8s"], std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!ok && text.contains("replica"), "{text}");
}

#[test]
fn the_manifests_hold_together() {
    let docs = documents();
    let hpa = find(&docs, "HorizontalPodAutoscaler", "toctou-collector");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let target = hpa["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
    find(&docs, "Deployment", target);

    // Correlators sized by partitions: no more replicas than the topic's partitions.
    let job = find(&docs, "Job", "toctou-kafka-init");
    let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let partitions: u64 = args[args.iter().position(|a| *a == "--partitions").unwrap() + 1]
        .parse()
        .unwrap();
    let sts = find(&docs, "StatefulSet", "toctou-correlator");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert!(
        replicas <= partitions && partitions % replicas == 0,
        "{replicas} correlators, {partitions} partitions"
    );

    // Config from the ConfigMap, the password only from the Secret.
    let config = find(&docs, "ConfigMap", "toctou-config");
    let secret = find(&docs, "Secret", "toctou-clickhouse");
    for key in config["data"].as_mapping().unwrap().keys() {
        assert!(
            !key.as_str().unwrap().contains("PASSWORD"),
            "a password in the ConfigMap"
        );
    }
    assert!(secret["stringData"]["TOCTOU_CLICKHOUSE_PASSWORD"].is_string());
    for d in &docs {
        let spec = if d["kind"] == "CronJob" {
            &d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &d["spec"]["template"]["spec"]
        };
        for c in spec["containers"].as_sequence().into_iter().flatten() {
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(name) = from["configMapRef"]["name"].as_str() {
                    find(&docs, "ConfigMap", name);
                }
                if let Some(name) = from["secretRef"]["name"].as_str() {
                    find(&docs, "Secret", name);
                }
            }
        }
    }
}

/// Whether a command's --help lists `var` (clap prints `[env: NAME=value]`, or
/// `[env: NAME]` for flags whose values it hides, such as the ClickHouse URL).
fn reads(help: &str, var: &str) -> bool {
    help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]"))
}

/// Every TOCTOU_* variable and --flag the deployment gives a toctou command is one that
/// command knows (its --help lists each flag with its environment variable).
#[test]
fn the_deployed_flags_and_variables_are_the_commands_own() {
    let help = |cmd: &[&str]| -> String {
        let out = Command::new(BIN).args(cmd).arg("--help").output().unwrap();
        assert!(out.status.success(), "toctou {cmd:?} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut checked = 0;
    let mut check = |args: &[String], env: &[String], at: &str| {
        let sub: Vec<&str> = args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .map(String::as_str)
            .collect();
        let text = help(&sub);
        for a in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                text.contains(&format!("{a} ")) || text.contains(&format!("{a}\n")),
                "{at}: toctou {sub:?} has no {a}"
            );
            checked += 1;
        }
        for e in env {
            assert!(reads(&text, e), "{at}: toctou {sub:?} reads no {e}");
            checked += 1;
        }
    };
    let c = compose();
    for (name, svc) in c["services"].as_mapping().unwrap() {
        if !svc["image"].as_str().unwrap_or("").contains("toctou") {
            continue;
        }
        let args: Vec<String> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let env: Vec<String> = svc["environment"]
            .as_mapping()
            .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        check(
            &args,
            &env,
            &format!("compose service {}", name.as_str().unwrap()),
        );
    }
    let docs = documents();
    let config: Vec<String> = find(&docs, "ConfigMap", "toctou-config")["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for d in &docs {
        let spec = if d["kind"] == "CronJob" {
            &d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &d["spec"]["template"]["spec"]
        };
        for c in spec["containers"].as_sequence().into_iter().flatten() {
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let mut env: Vec<String> = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            // The ConfigMap's variables a command reads must be its own; the others are
            // for the other commands sharing the map.
            let sub: Vec<&str> = args
                .iter()
                .take_while(|a| !a.starts_with('-'))
                .map(String::as_str)
                .collect();
            let text = help(&sub);
            let from_map: Vec<String> =
                config.iter().filter(|k| reads(&text, k)).cloned().collect();
            assert!(
                !from_map.is_empty(),
                "{} reads nothing from the ConfigMap",
                d["metadata"]["name"].as_str().unwrap()
            );
            env.extend(from_map);
            check(
                &args,
                &env,
                &format!(
                    "{} {}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                ),
            );
        }
    }
    // Every key of the ConfigMap is read by some deployed command.
    let all_help: String = [
        &["collector"][..],
        &["correlator"],
        &["migrate"],
        &["kafka", "init"],
    ]
    .iter()
    .map(|c| help(c))
    .collect();
    for k in &config {
        assert!(
            reads(&all_help, k),
            "ConfigMap key {k} is read by no command"
        );
    }
    assert!(checked > 30, "only {checked} flags and variables checked");
}

#[test]
fn the_files_the_stack_mounts_exist_and_agree() {
    let c = compose();
    let mut mounts = BTreeMap::new();
    for (_, svc) in c["services"].as_mapping().unwrap() {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap();
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('.') {
                let path = root().join("deploy").join(src);
                assert!(path.exists(), "compose mounts {src}, which does not exist");
                mounts.insert(dst.to_string(), path);
            }
        }
    }
    // Grafana: the provisioning and the dashboards where the provider looks for them.
    let provider: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("dashboards/provisioning/dashboards/toctou.yaml"))
            .unwrap(),
    )
    .unwrap();
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(mounts[path], root().join("deploy/../dashboards"));
    assert_eq!(
        mounts["/etc/grafana/provisioning/alerting"],
        root().join("deploy/../alerts/grafana")
    );
    assert_eq!(
        mounts["/etc/grafana/provisioning/datasources"],
        root().join("deploy/../dashboards/provisioning/datasources")
    );
    // Every ${VAR} the provisioning files expand is set in the Grafana container.
    let grafana_env: BTreeSet<String> = c["services"]["grafana"]["environment"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for f in [
        "dashboards/provisioning/datasources/toctou.yaml",
        "alerts/grafana/contact-points.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        let config: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for part in config.split("${").skip(1) {
            let var = part.split('}').next().unwrap();
            assert!(
                grafana_env.contains(var),
                "{f} uses ${{{var}}}, not set for grafana"
            );
        }
    }
    // Prometheus: the rule files it loads are mounted.
    let prom: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus.yml")).unwrap(),
    )
    .unwrap();
    for r in prom["rule_files"].as_sequence().unwrap() {
        let r = r.as_str().unwrap();
        let (dir, file) = r.rsplit_once('/').unwrap();
        assert!(
            mounts[dir].join(file).exists(),
            "prometheus loads {r}, not mounted"
        );
    }
}

/// `${NAME:-default}` as compose interpolates it (only defaults are used here).
fn interpolate(s: &str) -> String {
    let mut out = s.to_string();
    while let Some(at) = out.find("${") {
        let end = at + out[at..].find('}').unwrap();
        let inner = &out[at + 2..end];
        let default = inner
            .split_once(":-")
            .map(|(_, d)| d)
            .unwrap_or("")
            .to_string();
        out.replace_range(at..=end, &default);
    }
    out
}

/// A toctou process started with a compose service's command and environment.
struct Service {
    child: Child,
    api: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn service_command(name: &str, local: &dyn Fn(&str, &str) -> String) -> Command {
    let c = compose();
    let svc = &c["services"][name];
    let mut cmd = Command::new(BIN);
    for a in svc["command"].as_sequence().unwrap() {
        cmd.arg(interpolate(a.as_str().unwrap()));
    }
    for (k, v) in svc["environment"].as_mapping().unwrap() {
        let k = k.as_str().unwrap();
        cmd.env(k, local(k, &interpolate(v.as_str().unwrap())));
    }
    cmd.env("TOCTOU_LOG", "info").stdin(Stdio::null());
    cmd
}

fn start(name: &str, ready: &str, local: &dyn Fn(&str, &str) -> String) -> Service {
    let mut child = service_command(name, local)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting toctou");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        let ready = ready.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&ready) {
                    let _ = tx.send(line.clone());
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "compose service {name} did not start:\n{}",
                log.lock().unwrap().join("\n")
            )
        });
    let api = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("api="))
        .unwrap_or_else(|| panic!("no api= in {line}"))
        .to_string();
    Service { child, api }
}

fn families(url: &str) -> BTreeSet<String> {
    let text = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap()
        });
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and Kafka: run ./scripts/test"
)]
#[test]
fn the_compose_services_run_with_their_own_configuration_and_serve_the_rules_metrics() {
    let broker = Broker::start();
    let ch = common::clickhouse::server_url();
    let db = format!("toctou_deploy_{}", std::process::id());
    let bootstrap = broker.bootstrap.clone();
    // The compose hosts, pointed at this machine's broker and ClickHouse; listeners on free
    // loopback ports; the test server's default user.
    let local = move |key: &str, value: &str| -> String {
        match key {
            "TOCTOU_KAFKA_BOOTSTRAP" => bootstrap.clone(),
            "TOCTOU_CLICKHOUSE_URL" => ch.clone(),
            "TOCTOU_CLICKHOUSE_USER" => "default".into(),
            "TOCTOU_CLICKHOUSE_PASSWORD" => String::new(),
            "TOCTOU_CLICKHOUSE_DATABASE" => db.clone(),
            _ if value.starts_with("0.0.0.0:") => "127.0.0.1:0".into(),
            _ => value.to_string(),
        }
    };
    for one_shot in ["kafka-init", "migrate"] {
        let out = service_command(one_shot, &local)
            .output()
            .expect("running a one-shot service");
        assert!(
            out.status.success(),
            "compose service {one_shot}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let collector = start("collector", "toctou collector listening", &local);
    let correlator = start("correlator", "toctou correlator consuming", &local);
    // The consumer lag is served from librdkafka's first statistics on (5 s after start).
    let lag_served = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let served: BTreeSet<String> = loop {
        let served: BTreeSet<String> = families(&format!("http://{}/metrics", collector.api))
            .into_iter()
            .chain(families(&format!("http://{}/metrics", correlator.api)))
            .collect();
        if served.contains("toctou_kafka_consumer_lag_messages")
            || std::time::Instant::now() > lag_served
        {
            break served;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };

    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("alerts/prometheus/kafka.rules.yml")).unwrap(),
    )
    .unwrap();
    let mut names = 0;
    for r in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("toctou_") {
                assert!(
                    served.contains(word),
                    "{:?}: {word} is not served: {served:?}",
                    r["alert"]
                );
                names += 1;
            }
        }
    }
    assert!(names >= 5, "{names}");
    drop(collector);
    drop(correlator);
    drop(broker);
}
