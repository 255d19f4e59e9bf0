//! A `toctou` process for black-box tests: started with its log on a pipe, found ready
//! through its start-up log line (whose `name=value` fields give its addresses), killed when
//! dropped. `Toctou` (a `toctou run`) and the distributed-mode nodes are both this.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `toctou` process found through its start-up log line, killed when dropped.
pub struct Node {
    child: Child,
    pub fields: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts `toctou <args>` and waits for the log line containing `ready`.
    pub fn start(args: &[String], ready: &str) -> Node {
        Node::start_env(args, &[], ready)
    }

    /// [`Node::start`] with environment variables set (applied after `TOCTOU_LOG=info`, so
    /// they may override it).
    pub fn start_env(args: &[String], env: &[(&str, &str)], ready: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_toctou"))
            .args(args)
            .env("TOCTOU_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting toctou");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            let ready = ready.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(&ready) {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "toctou {args:?} did not start; its log:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        let fields = line
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Node { child, fields, log }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name}= in {:?}", self.fields))
            .1
            .parse()
            .unwrap()
    }

    /// The process id, to read its /proc entries (peak RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr("api")))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
