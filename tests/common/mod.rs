//! Starts the real `tidepool` binary on port 0 with a temporary root and finds its ports from the
//! start-up lines. Dropping a [`Server`] kills the process it started (by its PID) and nothing else.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidepool");
/// The super user every test server is created with (HDB_ADMIN_USERNAME/HDB_ADMIN_PASSWORD).
/// Its name sorts after the users other tests create (`ann`, `bob`), whose `list_users`
/// checks look at the first entry.
pub const ADMIN_USER: &str = "test_admin";
pub const ADMIN_PASSWORD: &str = "Adm1n-pass-for-tests";

/// A port that is free now on every address of `ips`, for a server that must listen on a port
/// the test names (to come back on it, or to be named in another server's routes). It is below
/// 32768, the tests' rule for fixed ports: the kernel hands out 32768–60999 as client ports, so
/// a port taken from there (binding port 0) can become any test's client port between this check
/// and the server's bind.
///
/// Test processes run at once (nextest runs each test in its own) and a port is free for each of
/// them until a server binds it, so a port is also claimed across processes: a lock (`flock`) on
/// a file named after it in the temporary folder, held until this process exits. Another process
/// skips a port whose lock it cannot take.
pub fn free_port_on(ips: &[&str]) -> u16 {
    use std::os::unix::io::AsRawFd as _;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    const SPAN: u32 = 4_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static CLAIMED: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("tidepool-test-ports");
    std::fs::create_dir_all(&dir).expect("port claims folder");
    let offset = (std::process::id() % SPAN) * 2;
    for _ in 0..SPAN {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % (2 * SPAN);
        assert!(
            port < 32_768,
            "fixed test ports stay below the client port range"
        );
        let port = port as u16;
        let Ok(claim) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // SAFETY: flock(2) on a descriptor this function owns; it touches no memory of ours.
        if unsafe { libc::flock(claim.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let held: Vec<_> = ips
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if held.iter().all(Result::is_ok) {
            CLAIMED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(claim);
            return port;
        }
    }
    panic!("no port below 32768 free on {ips:?}");
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Writes an application to `dir`: `schema.graphql` holding `schema`, REST on.
pub fn write_schema_app(dir: &Path, schema: &str) {
    std::fs::write(dir.join("schema.graphql"), schema).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        "rest: true\ngraphqlSchema:\n  files: schema.graphql\n",
    )
    .unwrap();
}

/// Starts a server on an application of `schema` (see [`write_schema_app`]) without fsync; the
/// returned directory holds the application and must outlive the server.
pub fn start_schema_app(schema: &str) -> (Server, tempfile::TempDir) {
    let app = tempfile::tempdir().expect("app dir");
    write_schema_app(app.path(), schema);
    let server = Builder::new()
        .app(app.path())
        .arg("--STORAGE_SYNC", "false")
        .start();
    (server, app)
}

pub struct Server {
    pub child: Child,
    pub rest: SocketAddr,
    pub ops: SocketAddr,
    pub root: tempfile::TempDir,
    pub lines: mpsc::Receiver<String>,
}

pub struct Builder {
    args: Vec<String>,
    app: PathBuf,
    envs: Vec<(String, String)>,
    root: Option<tempfile::TempDir>,
    wrapper: Vec<String>,
    /// `authentication.authorizeLocal`: on by default so tests without credentials act as the
    /// super user from loopback; security tests turn it off.
    authorize_local: bool,
    subcommand: &'static str,
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            args: Vec::new(),
            app: repo_path("deploy/app"),
            envs: Vec::new(),
            root: None,
            wrapper: Vec::new(),
            authorize_local: true,
            subcommand: "run",
        }
    }
    /// `tidepool dev` instead of `tidepool run`.
    pub fn dev(mut self) -> Self {
        self.subcommand = "dev";
        self
    }
    /// Credential-less loopback requests are anonymous (`authorizeLocal: false`).
    pub fn require_credentials(mut self) -> Self {
        self.authorize_local = false;
        self
    }
    pub fn arg(mut self, key: &str, value: &str) -> Self {
        self.args.push(key.into());
        self.args.push(value.into());
        self
    }
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.into());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }
    pub fn app(mut self, app: &Path) -> Self {
        self.app = app.to_path_buf();
        self
    }
    pub fn root(mut self, root: tempfile::TempDir) -> Self {
        self.root = Some(root);
        self
    }
    /// Runs the server under another program, e.g. `setpriv ... --`.
    pub fn wrapper(mut self, words: &[&str]) -> Self {
        self.wrapper = words.iter().map(|w| w.to_string()).collect();
        self
    }

    pub fn command(&self, root: &Path) -> Command {
        let mut cmd = if self.wrapper.is_empty() {
            Command::new(BIN)
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(BIN);
            c
        };
        cmd.arg(self.subcommand)
            .arg(&self.app)
            .arg("--root")
            .arg(root);
        let has = |k: &str| self.args.iter().any(|a| a == k);
        if !has("--HTTP_PORT") {
            cmd.args(["--HTTP_PORT", "127.0.0.1:0"]);
        }
        if !has("--OPERATIONSAPI_NETWORK_PORT") {
            cmd.args(["--OPERATIONSAPI_NETWORK_PORT", "127.0.0.1:0"]);
        }
        if !has("--MQTT_NETWORK_PORT") {
            cmd.args(["--MQTT_NETWORK_PORT", "127.0.0.1:0"]);
        }
        // The default 8883 would collide between servers running at once.
        if !has("--MQTT_NETWORK_SECUREPORT") {
            cmd.args(["--MQTT_NETWORK_SECUREPORT", "127.0.0.1:0"]);
        }
        if !has("--cores") {
            cmd.args(["--cores", "2"]);
        }
        if !has("--AUTHENTICATION_AUTHORIZELOCAL") {
            let local = if self.authorize_local {
                "true"
            } else {
                "false"
            };
            cmd.args(["--AUTHENTICATION_AUTHORIZELOCAL", local]);
        }
        cmd.env("HDB_ADMIN_USERNAME", ADMIN_USER)
            .env("HDB_ADMIN_PASSWORD", ADMIN_PASSWORD);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.env_remove("HTTP_PORT")
            .env_remove("ROOTPATH")
            .env_remove("HDB_CONFIG");
        cmd
    }

    pub fn start(mut self) -> Server {
        let root = self.root.take().take_or_new();
        let mut cmd = self.command(root.path());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut rest = None;
        let mut ops = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while rest.is_none() || ops.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listener_addr(&line, "REST") {
                        rest = Some(addr);
                    }
                    if let Some(addr) = listener_addr(&line, "Operations API") {
                        ops = Some(addr);
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    panic!(
                        "server did not report its listeners (exit {status:?}); stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
        Server {
            child,
            rest: rest.unwrap(),
            ops: ops.unwrap(),
            root,
            lines: rx,
        }
    }
}

trait TakeOrNew {
    fn take_or_new(self) -> tempfile::TempDir;
}
impl TakeOrNew for Option<tempfile::TempDir> {
    fn take_or_new(self) -> tempfile::TempDir {
        self.unwrap_or_else(|| tempfile::tempdir().expect("temp root"))
    }
}

pub fn listener_addr(line: &str, kind: &str) -> Option<SocketAddr> {
    let rest = line.split("[notify]: ").nth(1)?;
    if !rest.starts_with(kind) {
        return None;
    }
    let after = rest.split(" listening on ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

impl Server {
    pub fn start() -> Server {
        Builder::new().start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of the child this test started.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit; returns its status code (None if killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.rest, path)
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}/", self.ops)
    }

    /// Lines the server has written to stderr since the last call.
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw HTTP/1.1 exchange over one TCP connection, for framing tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Over a stream connected some other way (e.g. from a chosen source address).
    pub fn over(stream: TcpStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one response; `head_only` for responses to HEAD.
    pub fn response(&mut self, head_only: bool) -> Option<RawResponse> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap_or(0);
                let hs: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len = hs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let len = if head_only || status < 200 || status == 204 || status == 304 {
                    0
                } else {
                    len
                };
                while self.buf.len() < n + len {
                    if !self.fill() {
                        return None;
                    }
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Some(RawResponse {
                    status,
                    headers: hs,
                    body,
                });
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// True when the server has closed the connection (EOF with nothing buffered).
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

/// splitmix64: a small seeded generator, so a failing randomized test replays from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `TIDEPOOL_SEED` when set (to replay a failure), else a fresh seed from the clock.
/// True with `TIDEPOOL_HEAVY=1`; otherwise says the heavy test is skipped.
pub fn heavy() -> bool {
    if std::env::var("TIDEPOOL_HEAVY").is_ok_and(|v| v == "1") {
        return true;
    }
    println!("skipped: heavy test; run with TIDEPOOL_HEAVY=1 (as .ci/run does)");
    false
}

pub fn seed() -> u64 {
    std::env::var("TIDEPOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Whether `program args…` runs and succeeds. A test skips the part that needs a missing tool
/// and says so — except with `TIDEPOOL_HEAVY` set (as `.ci/run` does, after installing every
/// tool), where a missing tool fails the test, so that CI never passes by skipping.
pub fn have_tool(program: &str, args: &[&str], install: &str) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("TIDEPOOL_HEAVY").is_none(),
            "{program} is needed here ({install}); TIDEPOOL_HEAVY is set, so it must not be skipped"
        );
        eprintln!("{program} unavailable ({install}): skipping the checks that need it");
    }
    ok
}

/// One whole MQTT packet (fixed header included) read from `r`, or None when the connection
/// ended or a read timed out. For the raw clients of the MQTT and security tests.
#[allow(dead_code)] // not every test file speaks MQTT
pub fn read_mqtt_packet(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 1];
    r.read_exact(&mut head).ok()?;
    let mut out = vec![head[0]];
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).ok()?;
        out.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

/// A masked client WebSocket frame with first byte `b0` (FIN, RSV, opcode), any length.
pub fn ws_client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Upgrades a raw TCP connection to a WebSocket on `path` with the extra header lines `extra`
/// (each ending in `\r\n`); returns the stream and the response head.
pub fn ws_raw_upgrade(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(request.as_bytes()).expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("response head");
        assert_eq!(
            n,
            1,
            "closed in the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// The plain MQTT port the server reported (`mqtt.network.port`), read from its start-up lines.
pub fn mqtt_port(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server reports its MQTT listener");
        if let Some(addr) = listener_addr(&line, "MQTT (") {
            return addr;
        }
    }
}

/// POST an Operations API request (as the server's super user unless `authorization` is given):
/// the status and the answer as JSON (text that is not JSON as a string).
pub fn ops_post(
    server: &Server,
    authorization: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = ureq::post(&server.ops_url())
        .timeout(Duration::from_secs(60))
        .set("Content-Type", "application/json");
    if let Some(a) = authorization {
        req = req.set("Authorization", a);
    }
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {body}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// `GET /health?verbose` as JSON.
pub fn health_verbose(server: &Server) -> serde_json::Value {
    let body = ureq::get(&server.url("/health?verbose"))
        .call()
        .expect("GET /health?verbose")
        .into_string()
        .expect("health body");
    serde_json::from_str(&body).expect("health JSON")
}

/// The sum over cores of a numeric field of `/health?verbose`.
pub fn core_sum(health: &serde_json::Value, field: &str) -> u64 {
    health["cores"]
        .as_array()
        .expect("cores")
        .iter()
        .map(|c| c[field].as_u64().unwrap_or(0))
        .sum()
}

/// An MQTT UTF-8 string: two length bytes, then the bytes.
pub fn mqtt_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// An MQTT packet: first byte, variable-length remaining length, body.
pub fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A `kB` line of `/proc/<pid>/status` (VmRSS, VmHWM), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}
