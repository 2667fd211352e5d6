//! The real `autofollow serve` binary as a child process, its log captured.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

use super::service::{SECRET, public_key_pem};

pub struct Service {
    pub child: Child,
    /// The public listener.
    pub base: String,
    /// The admin listener (admin API, metrics, detailed readiness).
    pub admin: String,
    /// Everything the process logged.
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// An app webhook signed with the test key.
    pub async fn post_app(&self, body: &Value) -> reqwest::Response {
        super::service::post_signed(&reqwest::Client::new(), &self.base, body).await
    }

    /// The whole log, once the process has exited.
    pub fn logs(mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A failing test must not leave a service running (it would hold the test's output open).
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `autofollow serve` on free ports with the test secret and key, JSON logs and file
/// watching off (so SIGHUP is what reloads), plus `env` (which may override those); waits for
/// the addresses it logs.
pub fn spawn(env: &[(&str, String)]) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autofollow"));
    command
        .arg("serve")
        .env("AUTOFOLLOW_WATCH_RULES", "false")
        .env("AUTOFOLLOW_LISTEN", "127.0.0.1:0")
        .env("AUTOFOLLOW_ADMIN_LISTEN", "127.0.0.1:0")
        .env("AUTOFOLLOW_WEBHOOK_SECRET", SECRET)
        .env("GHL_WEBHOOK_PUBLIC_KEYS", public_key_pem())
        .env("AUTOFOLLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn autofollow");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            if let Some(addresses) = listening(&line) {
                let _ = tx.send(addresses);
            }
        }
    });
    let (addr, admin) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the service logs its address");
    Service {
        child,
        base: format!("http://{addr}"),
        admin: format!("http://{admin}"),
        log,
        reader: Some(reader),
    }
}

/// The public and admin addresses of the "listening" line, in JSON or pretty format.
fn listening(line: &str) -> Option<(String, String)> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let addr = v.get("addr").and_then(Value::as_str)?;
        let admin = v.get("admin_addr").and_then(Value::as_str).unwrap_or("off");
        return Some((addr.to_owned(), admin.to_owned()));
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.trim_matches(',').to_owned())
    };
    line.contains("autofollow is listening")
        .then(|| Some((field("addr=")?, field("admin_addr=")?)))
        .flatten()
}

/// A temporary directory holding `rules.yaml`: the test aliases, then `rules:` and `rules`
/// (rule list items).
pub fn rules_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = format!("{}rules:\n{rules}", super::USERS);
    std::fs::write(dir.path().join("rules.yaml"), text).expect("rules.yaml");
    dir
}

/// Serves `router` (a GoHighLevel stand-in) on a free loopback port; its base URL.
pub async fn serve_stand_in(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// `tokens.yaml` in `dir` giving locations `L0`… `L{n-1}` the tokens `tok-L0`…; its path.
pub fn location_tokens(dir: &std::path::Path, locations: usize) -> std::path::PathBuf {
    let path = dir.join("tokens.yaml");
    let yaml: String = (0..locations)
        .map(|l| format!("L{l}: tok-L{l}\n"))
        .collect();
    std::fs::write(&path, yaml).expect("tokens.yaml");
    path
}
