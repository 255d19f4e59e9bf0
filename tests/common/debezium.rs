//! Debezium run by the project's scripts for tests: Kafka Connect with Debezium's PostgreSQL
//! connector (scripts/debezium) and Debezium Server (scripts/debezium-server), each from a
//! home of its own under the test root, stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

/// The checkout's script (the run-time CARGO_MANIFEST_DIR first: a binary reused from
/// another checkout keeps its compile-time one).
fn script_path(name: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("scripts")
        .join(name)
}

/// A service one of the scripts runs (Kafka Connect with Debezium's connector, Debezium
/// Server) from a home of its own under the test root, stopped when dropped.
pub struct Scripted {
    script: &'static str,
    home_var: &'static str,
    home: PathBuf,
}

impl Scripted {
    /// `<script> start <args>` with `env`; returns once the script says it runs (the slot
    /// exists then).
    pub fn start(
        script: &'static str,
        home_var: &'static str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Scripted {
        let home = std::env::var_os("TOCTOU_KAFKA_TEST_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(name);
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new(script_path(script))
            .arg("start")
            .args(args)
            .env(home_var, &home)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
        assert!(
            out.status.success(),
            "scripts/{script} start failed (run 'scripts/{script} install' first?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scripted {
            script,
            home_var,
            home,
        }
    }

    /// Kafka Connect running the connector of deploy/debezium/postgres-connector.json on
    /// the database at `url`.
    pub fn connect(bootstrap: &str, url: &str, prefix: &str, slot: &str) -> Scripted {
        let name = format!("toctou-debezium-{prefix}");
        let args = [bootstrap, url, prefix];
        Scripted::start(
            "debezium",
            "TOCTOU_DEBEZIUM_HOME",
            &name,
            &args,
            &[("TOCTOU_DEBEZIUM_SLOT", slot)],
        )
    }

    /// Debezium Server with deploy/debezium/application.properties, signing with `token`.
    pub fn server(sink: &str, prefix: &str, slot: &str, token: &str) -> Scripted {
        let name = format!("toctou-debezium-server-{prefix}");
        let args = [sink, &super::cdc::pg_url(), prefix];
        let env = [
            ("TOCTOU_DEBEZIUM_SERVER_SLOT", slot),
            ("TOCTOU_DEBEZIUM_SERVER_TOKEN", token),
        ];
        Scripted::start(
            "debezium-server",
            "TOCTOU_DEBEZIUM_SERVER_HOME",
            &name,
            &args,
            &env,
        )
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = Command::new(script_path(self.script))
            .arg("stop")
            .env(self.home_var, &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
