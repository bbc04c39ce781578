//! The command line's words: which command, its options, and the commands that talk to a running
//! server (`status`, `stop`, `tidepool <operation> key=value …`). docs/cli.md is the user's page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tidepool_io::IoDriver;

pub const USAGE: &str = "\
tidepool — a real-time database server speaking HarperDB 4.x's interfaces

USAGE:
    tidepool run <app-dir> [OPTIONS] [--<SETTING> <value>]...   serve an application
    tidepool dev <app-dir> [OPTIONS]       run for development: info logs on stdout, local
                                           requests act as the super user, one core, live reload
    tidepool status [--root DIR]           is a server running on this root? (exit 3 when not)
    tidepool stop [--root DIR]             stop the server running on this root (SIGTERM, waits)
    tidepool <operation> [key=value]...    an Operations API call to the local server, e.g.
                                           tidepool describe_all; tidepool sql sql='SELECT 1'
    tidepool version
    tidepool help [run|dev|status|stop|operations|settings]

`tidepool <command> --help` shows a command's options. Every setting: `tidepool help settings`
or docs/configuration.md.";

const RUN_HELP: &str = "\
tidepool run <app-dir> [OPTIONS] [--<SETTING> <value>]...
tidepool dev <app-dir> [OPTIONS] [--<SETTING> <value>]...

Serves the application in <app-dir> (its schema.graphql and config.yaml: docs/applications.md).
`dev` also sets logging.stdStreams, logging.level info, authentication.authorizeLocal and one
core, and reloads the schema when its files change.

OPTIONS (each also as --OPTION=value):
    --root DIR              the root folder: data, keys, logs (default $ROOTPATH, else ~/hdb)
    --cores N               executor threads, one per CPU of the affinity mask (default: all)
    --io-driver MODE        uring, epoll or auto (default auto: io_uring, else epoll)
    --share-ports           let another process listen on the same ports (http.sharePorts)
    --<SETTING> <value>     any setting of harperdb-config.yaml, its path joined by `_`:
                            --HTTP_PORT 127.0.0.1:9926, --LOGGING_LEVEL info, --STORAGE_SYNC false
    -h, --help              this text

Settings also come from environment variables of the same names and from the configuration file
(<root>/harperdb-config.yaml, or the file HDB_CONFIG names); the command line wins, then the
environment, then the file. An unknown setting stops the start with the nearest known one;
HarperDB settings that tidepool does not use are accepted with a warning.
Every setting with its default: `tidepool help settings`; explained in docs/configuration.md.";

const STATUS_HELP: &str = "\
tidepool status [--root DIR]

Says whether a tidepool process holds the root's lock, with its pid. Exit status 0 when one
runs, 3 when none does (as LSB init scripts do).";

const STOP_HELP: &str = "\
tidepool stop [--root DIR] [--timeout SECONDS]

Sends SIGTERM to the process holding the root's lock and waits until it has exited (default 30
seconds). In-flight requests finish first; the store is crash-safe either way. Under systemd use
`systemctl stop tidepool` instead, or systemd restarts it.";

const OPERATIONS_HELP: &str = "\
tidepool <operation> [key=value]... [--root DIR]

Sends one Operations API request, {\"operation\": \"<operation>\", \"key\": value, …}, to the server
running on this root (the address it recorded at start; else operationsApi.network.port of the
configuration, on 127.0.0.1 when it binds every address) and prints the answer as YAML (json=true: JSON). A value is read as JSON when it parses
as JSON (42, true, [\"a\"], {\"x\":1}), else as text. As HarperDB's CLI:
    tidepool describe_all
    tidepool create_table database=dev table=dog primary_key=id
    tidepool insert database=dev table=dog 'records=[{\"id\":1,\"name\":\"Penny\"}]'
    tidepool sql sql='SELECT * FROM dev.dog'
    tidepool restart
Credentials: username= and password=, else CLI_TARGET_USERNAME and CLI_TARGET_PASSWORD, else
none (enough when authentication.authorizeLocal is on). target=http://host:port sends the
request to another server. Exit status 0 when the answer is 2xx, 1 otherwise.";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// `run` (false) or `dev` (true).
    Run {
        dev: bool,
    },
    Version,
    /// `help [topic]`, or `<command> --help`.
    Help(Option<String>),
    Status,
    Stop,
    /// An Operations API call with its `key=value` fields.
    Operation(String),
}

pub struct Cli {
    pub command: Command,
    pub app_dir: PathBuf,
    pub cores: Option<usize>,
    pub root: Option<PathBuf>,
    pub io_driver: IoDriver,
    /// `--KEY value` settings.
    pub overrides: Vec<(String, String)>,
    /// `key=value` fields of an operation.
    pub fields: Vec<(String, String)>,
    /// `stop --timeout`.
    pub stop_timeout: Duration,
}

const COMMANDS: &[&str] = &["run", "dev", "status", "stop", "version", "help"];

/// Operations whose names have no `_`; every other operation name has one, so a lone word that is
/// not a command nor one of these is a mistyped command, not an operation.
const SINGLE_WORD_OPERATIONS: &[&str] = &[
    "sql", "restart", "insert", "update", "upsert", "delete", "search", "login", "logout",
];

fn is_operation_name(word: &str) -> bool {
    !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && (word.contains('_') || SINGLE_WORD_OPERATIONS.contains(&word))
}

pub fn parse_args(args: &[String]) -> Result<Cli, String> {
    let first = args.first().map(String::as_str).unwrap_or("help");
    let command = match first {
        "run" => Command::Run { dev: false },
        "dev" => Command::Run { dev: true },
        "version" | "--version" | "-V" => Command::Version,
        "help" | "--help" | "-h" => Command::Help(args.get(1).cloned()),
        "status" => Command::Status,
        "stop" => Command::Stop,
        op if is_operation_name(op) => Command::Operation(op.to_string()),
        other => {
            let hint = tidepool::util::nearest(other, COMMANDS.iter().copied())
                .map(|c| format!("; did you mean `tidepool {c}`?"))
                .unwrap_or_default();
            return Err(format!("unknown command {other:?}{hint}"));
        }
    };
    let mut cli = Cli {
        command,
        app_dir: PathBuf::new(),
        cores: None,
        root: None,
        io_driver: IoDriver::Auto,
        overrides: Vec::new(),
        fields: Vec::new(),
        stop_timeout: Duration::from_secs(30),
    };
    if matches!(cli.command, Command::Help(_) | Command::Version) {
        return Ok(cli);
    }
    let mut app_dir = None;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--help" || arg == "-h" {
            cli.command = Command::Help(Some(topic(&cli.command).to_string()));
            return Ok(cli);
        }
        // `--KEY=value` is `--KEY value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg, None),
        };
        let takes_value = flag.starts_with("--") && flag != "--share-ports";
        let value = if !takes_value {
            None
        } else if let Some(v) = inline {
            Some(v)
        } else {
            i += 1;
            match args.get(i) {
                Some(v) if !v.starts_with("--") => Some(v.clone()),
                _ => {
                    return Err(format!(
                        "{flag} needs a value ({flag} VALUE or {flag}=VALUE)"
                    ))
                }
            }
        };
        i += 1;
        match (flag, value) {
            ("--root", Some(v)) => cli.root = Some(PathBuf::from(v)),
            ("--cores", Some(v)) => {
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--cores takes a whole number ≥ 1, got {v:?}"))?;
                if n == 0 {
                    return Err("--cores must be at least 1".into());
                }
                cli.cores = Some(n);
            }
            ("--io-driver", Some(v)) => cli.io_driver = v.parse()?,
            ("--timeout", Some(v)) if cli.command == Command::Stop => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout takes whole seconds, got {v:?}"))?;
                cli.stop_timeout = Duration::from_secs(secs);
            }
            ("--share-ports", None) => cli
                .overrides
                .push(("HTTP_SHAREPORTS".into(), "true".into())),
            (flag, Some(v)) if matches!(cli.command, Command::Run { .. }) => cli
                .overrides
                .push((flag.trim_start_matches("--").to_string(), v)),
            (flag, Some(_)) => {
                return Err(format!(
                    "`tidepool {}` has no option {flag} (see `tidepool {} --help`)",
                    topic(&cli.command),
                    topic(&cli.command)
                ))
            }
            (field, None) if matches!(cli.command, Command::Operation(_)) => {
                let (k, v) = field
                    .split_once('=')
                    .ok_or_else(|| format!("{field:?}: an operation takes key=value fields"))?;
                cli.fields.push((k.to_string(), v.to_string()));
            }
            (positional, None) if matches!(cli.command, Command::Run { .. }) => {
                if app_dir.is_some() {
                    return Err(format!("unexpected argument {positional:?}"));
                }
                app_dir = Some(PathBuf::from(positional));
            }
            (other, None) => {
                return Err(format!(
                    "unexpected argument {other:?} (see `tidepool {} --help`)",
                    topic(&cli.command)
                ))
            }
        }
    }
    if let Command::Run { dev } = cli.command {
        let name = if dev { "dev" } else { "run" };
        cli.app_dir =
            app_dir.ok_or_else(|| format!("`tidepool {name}` needs an application folder"))?;
    }
    Ok(cli)
}

fn topic(command: &Command) -> &str {
    match command {
        Command::Run { dev: false } => "run",
        Command::Run { dev: true } => "dev",
        Command::Status => "status",
        Command::Stop => "stop",
        Command::Operation(_) => "operations",
        Command::Version | Command::Help(_) => "help",
    }
}

/// `tidepool help [topic]`.
pub fn help(topic: Option<&str>) -> ExitCode {
    let text = match topic {
        None | Some("help") => USAGE,
        Some("run" | "dev") => RUN_HELP,
        Some("status") => STATUS_HELP,
        Some("stop") => STOP_HELP,
        Some("operations" | "operation") => OPERATIONS_HELP,
        Some("settings" | "config" | "configuration") => tidepool::config::DEFAULT_CONFIG_YAML,
        Some(other) => {
            eprintln!("tidepool: no help on {other:?}\n\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    println!("{}", text.trim_end());
    ExitCode::SUCCESS
}

/// `tidepool status`.
pub fn status(root: &Path) -> ExitCode {
    match tidepool::server::lock_holder(root) {
        Some(pid) => {
            println!("tidepool is running on root {} (pid {pid})", root.display());
            ExitCode::SUCCESS
        }
        None => {
            println!("tidepool is not running on root {}", root.display());
            ExitCode::from(3)
        }
    }
}

/// `tidepool stop`: SIGTERM to the lock holder, then wait for the lock to be free.
pub fn stop(root: &Path, timeout: Duration) -> ExitCode {
    let Some(pid) = tidepool::server::lock_holder(root) else {
        println!("tidepool is not running on root {}", root.display());
        return ExitCode::SUCCESS;
    };
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        eprintln!("tidepool: the lock file names pid {pid}, which is not a process id");
        return ExitCode::from(1);
    };
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("tidepool: cannot signal pid {pid}: {e}");
        return ExitCode::from(1);
    }
    let deadline = Instant::now() + timeout;
    while tidepool::server::lock_holder(root).is_some() {
        if Instant::now() > deadline {
            eprintln!(
                "tidepool: pid {pid} still runs after {} s",
                timeout.as_secs()
            );
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("tidepool stopped (pid {pid})");
    ExitCode::SUCCESS
}

/// The answer to one Operations API request.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// `tidepool <operation> key=value …` against `ops` (or the fields' `target=`).
pub fn operation(name: &str, fields: &[(String, String)], ops: Option<SocketAddr>) -> ExitCode {
    let mut body = serde_json::Map::new();
    body.insert("operation".into(), serde_json::Value::String(name.into()));
    let mut username = std::env::var("CLI_TARGET_USERNAME").ok();
    let mut password = std::env::var("CLI_TARGET_PASSWORD").ok();
    let mut target = std::env::var("CLI_TARGET").ok();
    let mut json = false;
    for (key, raw) in fields {
        match key.as_str() {
            "username" => username = Some(raw.clone()),
            "password" => password = Some(raw.clone()),
            "target" => target = Some(raw.clone()),
            "json" => json = raw == "true",
            _ => {
                let value = serde_json::from_str(raw)
                    .unwrap_or_else(|_| serde_json::Value::String(raw.clone()));
                body.insert(key.clone(), value);
            }
        }
    }
    let addr = match target
        .as_deref()
        .map(target_addr)
        .unwrap_or(ops.ok_or_else(|| {
            "this root's configuration has no Operations API port (operationsApi.network.port)"
                .to_string()
        })) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("tidepool: {e}");
            return ExitCode::from(1);
        }
    };
    let credentials = username.map(|u| (u, password.unwrap_or_default()));
    let payload = serde_json::Value::Object(body).to_string();
    let answer = match post(addr, &payload, credentials.as_ref()) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("tidepool: cannot reach the Operations API at {addr}: {e} (is it running? `tidepool status`)");
            return ExitCode::from(1);
        }
    };
    let text = String::from_utf8_lossy(&answer.body);
    let shown = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) if json => serde_json::to_string_pretty(&value).unwrap_or_default(),
        Ok(value) => serde_yaml::to_string(&value).unwrap_or_default(),
        Err(_) => text.into_owned(),
    };
    let ok = (200..300).contains(&answer.status);
    if ok {
        println!("{}", shown.trim_end());
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", shown.trim_end());
        if answer.status == 401 && credentials.is_none() {
            eprintln!("tidepool: give username= and password= (or CLI_TARGET_USERNAME and CLI_TARGET_PASSWORD)");
        }
        ExitCode::from(1)
    }
}

/// `target=`: `http://host:port`, `host:port` or a host (HarperDB's CLI defaults to port 9925).
fn target_addr(target: &str) -> Result<SocketAddr, String> {
    let rest = target.strip_prefix("http://").unwrap_or(target);
    if target.starts_with("https://") {
        return Err("target=https://… is not supported by the CLI; use the server's plain Operations API port".into());
    }
    let rest = rest.trim_end_matches('/');
    let with_port = if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest.to_string()
    } else {
        format!("{rest}:9925")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("target {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("target {target:?}: no address"))
}

/// The Operations API's address: as the running server recorded it in the root's lock file, else
/// from this root's configuration; on 127.0.0.1 when it binds every address (`9925`).
pub fn local_ops_addr(root: &Path, config: &tidepool::config::Config) -> Option<SocketAddr> {
    let addr = tidepool::server::recorded_operations_api(root)
        .or_else(|| config.operations_api_port.as_ref().map(|a| a.0))?;
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    Some(SocketAddr::new(host, addr.port()))
}

/// One HTTP/1.1 POST, blocking (the CLI is not the server), answer read to its end.
fn post(
    addr: SocketAddr,
    body: &str,
    credentials: Option<&(String, String)>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let auth = credentials
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64(format!("{u}:{p}").as_bytes())
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw).ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Answer { status, body })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn help_anywhere_and_key_equals_value() {
        let cli = parse_args(&args(&["run", "--help"])).unwrap();
        assert_eq!(cli.command, Command::Help(Some("run".into())));
        let cli = parse_args(&args(&["run", "-h"])).unwrap();
        assert_eq!(cli.command, Command::Help(Some("run".into())));
        let cli = parse_args(&args(&[
            "run",
            "app",
            "--cores=2",
            "--HTTP_PORT=127.0.0.1:1",
        ]))
        .unwrap();
        assert_eq!(cli.cores, Some(2));
        assert_eq!(
            cli.overrides,
            vec![("HTTP_PORT".to_string(), "127.0.0.1:1".to_string())]
        );
        let e = parse_args(&args(&["run", "app", "--cores", "--root", "x"]))
            .err()
            .unwrap();
        assert!(e.starts_with("--cores needs a value"), "{e}");
        let e = parse_args(&args(&["rnu"])).err().unwrap();
        assert!(e.contains("did you mean `tidepool run`?"), "{e}");
        let cli = parse_args(&args(&["describe_table", "database=dev", "table=dog"])).unwrap();
        assert_eq!(cli.command, Command::Operation("describe_table".into()));
        assert_eq!(cli.fields.len(), 2);
    }

    #[test]
    fn base64_and_chunked_answers() {
        assert_eq!(base64(b"admin:pw"), "YWRtaW46cHc=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";
        let answer = parse_answer(raw).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"[1,2]");
    }
}
