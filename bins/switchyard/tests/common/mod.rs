//! What the binary's end-to-end tests share: a scratch directory, starting the built
//! `switchyard` on a configuration and waiting for `/health`, and raw HTTP/1.1
//! exchanges (what curl sends).
//!
//! Each test file compiles this module on its own and uses part of it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A scratch directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `switchyard-{tag}-{pid}`, emptied first.
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Write `text` to `name` in the directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running binary, killed (and its directory removed) when dropped.
pub struct Running {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// What the binary wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The configuration file it was started on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("switchyard.yaml")
    }

    /// Send a signal (`-HUP`, `-TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([name, &pid]).status().unwrap().success());
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start the binary on `config` (written to `dir/switchyard.yaml`) with `env` added,
/// stderr to `dir/stderr.log`, and wait up to `within` for `/health` to answer 200.
pub async fn start(dir: TempDir, config: &str, env: &[(&str, &str)], within: Duration) -> Running {
    let file = dir.write("switchyard.yaml", config);
    let log = dir.0.join("stderr.log");
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().expect("spawn switchyard");
    let running = Running { child, port, dir, log };
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, _)) = request(port, "GET", "/health", &[], "").await {
            break;
        }
        assert!(Instant::now() < deadline, "switchyard did not come up: {}", running.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

/// Send `raw` (a whole HTTP/1.1 request that asks to close) and read the answer to the
/// end: the status and the whole response, head included.
pub async fn send(port: u16, raw: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

/// One exchange: `method path` with `headers`, and `body` as JSON when there is one or
/// the method is POST.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    send(port, &raw).await
}

/// Head and body of a whole response.
pub fn split(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").unwrap_or((response, ""))
}
