//! The command line: subcommands and their flags, checked against the bounds below before
//! anything runs. It owns turning `argv` into typed settings and never starts a run itself.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tidepool_io::IoDriver;

/// Longest measured period of one run.
pub const DURATION_S_MAX: f64 = 3600.0;
/// Longest warm-up before measuring.
pub const WARMUP_S_MAX: f64 = 600.0;
/// Most connections in one run (each holds a socket and two small buffers).
pub const CONNECTIONS_MAX: usize = 10_000;
/// Most requests in flight on one connection.
pub const PIPELINE_MAX: usize = 256;
/// Most load threads.
pub const THREADS_MAX: usize = 64;
/// Most A/B rounds.
pub const ROUNDS_MAX: usize = 100;
/// Largest request body read from `--body-file`.
pub const BODY_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most `--header` flags.
pub const HEADERS_MAX: usize = 32;
/// Highest `--first-number`: numbers stay far below 2^53, so a JSON number holds them exactly.
pub const FIRST_NUMBER_MAX: u64 = 1 << 50;

pub const USAGE: &str = "\
tidepool-bench: load generator and baseline responder

USAGE:
  tidepool-bench http --target HOST:PORT --conns N --duration S [WORKLOAD] [--json]
  tidepool-bench compare-http --a HOST:PORT --b HOST:PORT --rounds R --duration S --conns N [WORKLOAD] [--json]
  tidepool-bench baseline --listen HOST:PORT [--cores N] [--io-driver uring|epoll|auto]
  tidepool-bench mqtt-fanout --target HOST:PORT [--target ...] [--topic T] [--subs N] [--messages M]
  tidepool-bench mqtt-retained --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--subs N] [--messages M]
  tidepool-bench mqtt-pairs --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--messages M] [--qos 0|1]
  tidepool-bench mqtt-fanin --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--subs N] [--messages M] [--qos 0|1] [--share G]
  tidepool-bench ws|sse --target HOST:PORT --subscribers N --events E [--path /Dog/] [--body-bytes B] [--auth USER:PASS] [--json]
  tidepool-bench chart --in RESULTS.json --out CHART.svg

WORKLOAD:
  --threads T          load threads (default: one per --cpus entry, else 1)
  --cpus LIST          CPUs to pin load threads to, e.g. 0 or 0,1 or 0-3 (default: last CPU allowed)
  --method M           request method (default GET)
  --path P             request target (default /); one {n} in it becomes a number distinct per
                       request (first + connection index + k * connections), e.g. --path '/Dog/{n}'
  --first-number N     where {n} starts (default 0); runs that must not write the same records
                       again give each run its own range
  --body-file F        request body, read once (adds Content-Length)
  --header 'K: V'      extra header, repeatable
  --auth USER:PASS     Authorization: Basic
  --mix PCT:METHOD:PATH  send this request instead for PCT % of the request numbers, e.g.
                       --mix 10:PUT:/Dog/{n} for 90/10 reads and writes ({n} as in --path)
  --mix-body-file F    body of the --mix request
  --pipeline K         requests in flight per connection (default 1)
  --warmup S           seconds before measuring (default 0 for http, 1 for compare-http)
  --io-driver D        uring, epoll or auto (default auto)
";

/// One HTTP workload, the same for every target it runs against.
#[derive(Debug, Clone)]
pub struct Workload {
    pub method: String,
    pub path: String,
    pub headers: Vec<String>,
    pub auth: Option<String>,
    pub body: Vec<u8>,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub pipeline: usize,
    /// One load thread per entry, pinned to that CPU.
    pub cpus: Vec<usize>,
    pub driver: IoDriver,
    /// A second request mixed in at a share (`--mix`).
    pub mix: Option<Mix>,
    /// Where `{n}` starts (`--first-number`).
    pub first_number: u64,
}

/// The request `--mix` sends for `percent` of the request numbers.
#[derive(Debug, Clone)]
pub struct Mix {
    pub percent: u8,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Where to send a workload: the resolved address and the `Host` header to name it by.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

#[derive(Debug)]
pub enum Command {
    Http {
        target: Target,
        workload: Workload,
        json: bool,
    },
    Compare {
        a: Target,
        b: Target,
        rounds: usize,
        workload: Workload,
        json: bool,
    },
    /// `ws` / `sse`: one writer, N subscribers on one table path.
    FanOut {
        workload: crate::sse::FanOut,
        json: bool,
    },
    Baseline {
        listen: SocketAddr,
        cores: Option<usize>,
        driver: IoDriver,
    },
    /// Draws the SVG chart of a `bench/compare` results file.
    Chart {
        input: String,
        output: String,
    },
    Help,
}

/// Flags as given, before checking.
#[derive(Default)]
struct Flags {
    values: Vec<(String, String)>,
    json: bool,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags> {
        let mut flags = Flags::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}");
            };
            if name == "json" {
                flags.json = true;
                continue;
            }
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = iter
                        .next()
                        .ok_or_else(|| anyhow!("--{name} needs a value"))?;
                    (name.to_string(), value.clone())
                }
            };
            flags.values.push((name, value));
        }
        Ok(flags)
    }

    /// Removes and returns the last value of `name` (a later flag overrides an earlier one).
    fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.values.retain(|(n, v)| {
            if n == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        self.values.retain(|(n, v)| {
            if n == name {
                found.push(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    fn require(&mut self, name: &str) -> Result<String> {
        self.take(name)
            .ok_or_else(|| anyhow!("--{name} is required"))
    }

    fn finish(self) -> Result<()> {
        match self.values.first() {
            Some((name, _)) => bail!("unknown flag --{name}"),
            None => Ok(()),
        }
    }
}

pub fn parse(args: &[String]) -> Result<Command> {
    let Some((sub, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    // `tidepool-bench http --help` asks for the usage too, wherever the flag stands.
    let flag = |a: &String| matches!(a.as_str(), "-h" | "--help");
    if flag(sub) || sub == "help" || rest.iter().any(flag) {
        return Ok(Command::Help);
    }
    let mut flags = Flags::parse(rest)?;
    let command = match sub.as_str() {
        "http" => {
            let target = target(&flags.require("target")?)?;
            let workload = workload(&mut flags, 0.0)?;
            Command::Http {
                target,
                workload,
                json: flags.json,
            }
        }
        "compare-http" => {
            let a = target(&flags.require("a")?)?;
            let b = target(&flags.require("b")?)?;
            let rounds = number(&flags.require("rounds")?, "--rounds", 1, ROUNDS_MAX)?;
            let workload = workload(&mut flags, 1.0)?;
            Command::Compare {
                a,
                b,
                rounds,
                workload,
                json: flags.json,
            }
        }
        "baseline" => {
            let listen = target(&flags.require("listen")?)?.addr;
            let cores = match flags.take("cores") {
                Some(v) => Some(number(&v, "--cores", 1, THREADS_MAX)?),
                None => None,
            };
            let driver = driver(flags.take("io-driver"))?;
            Command::Baseline {
                listen,
                cores,
                driver,
            }
        }
        "ws" | "sse" => {
            let workload = crate::sse::FanOut {
                target: target(&flags.require("target")?)?.addr,
                transport: if sub == "ws" {
                    crate::sse::Transport::WebSocket
                } else {
                    crate::sse::Transport::Sse
                },
                path: flags.take("path").unwrap_or_else(|| "/Dog/".into()),
                authorization: flags
                    .take("auth")
                    .map(|a| {
                        format!(
                            "Authorization: Basic {}\r\n",
                            crate::request::base64(a.as_bytes())
                        )
                    })
                    .unwrap_or_default(),
                subscribers: number(
                    &flags.require("subscribers")?,
                    "--subscribers",
                    1,
                    crate::sse::SUBSCRIBERS_MAX,
                )?,
                events: number(
                    &flags.require("events")?,
                    "--events",
                    1,
                    crate::sse::EVENTS_MAX,
                )?,
                body_bytes: match flags.take("body-bytes") {
                    Some(v) => number(&v, "--body-bytes", 16, 1 << 20)?,
                    None => 100,
                },
            };
            Command::FanOut {
                workload,
                json: flags.json,
            }
        }
        "chart" => Command::Chart {
            input: flags.require("in")?,
            output: flags.require("out")?,
        },
        other => bail!("unknown subcommand {other:?}\n\n{USAGE}"),
    };
    flags.finish()?;
    Ok(command)
}

fn workload(flags: &mut Flags, warmup_default_s: f64) -> Result<Workload> {
    let connections = number(&flags.require("conns")?, "--conns", 1, CONNECTIONS_MAX)?;
    let duration = seconds(&flags.require("duration")?, "--duration", DURATION_S_MAX)?;
    if duration.is_zero() {
        bail!("--duration must be above 0");
    }
    let warmup = match flags.take("warmup") {
        Some(v) => seconds(&v, "--warmup", WARMUP_S_MAX)?,
        None => Duration::from_secs_f64(warmup_default_s),
    };
    let pipeline = match flags.take("pipeline") {
        Some(v) => number(&v, "--pipeline", 1, PIPELINE_MAX)?,
        None => 1,
    };
    let threads = match flags.take("threads") {
        Some(v) => Some(number(&v, "--threads", 1, THREADS_MAX)?),
        None => None,
    };
    let cpu_list = match flags.take("cpus") {
        Some(v) => cpus(&v)?,
        None => vec![*tidepool_io::affinity_cpus().last().unwrap_or(&0)],
    };
    // One thread per listed CPU unless --threads says otherwise; then threads take the CPUs in turn.
    let threads = threads.unwrap_or(cpu_list.len()).min(THREADS_MAX);
    let cpus: Vec<usize> = (0..threads).map(|i| cpu_list[i % cpu_list.len()]).collect();
    if connections < threads {
        bail!("--conns {connections} is fewer than the {threads} load threads");
    }
    let method = check_method(flags.take("method").unwrap_or_else(|| "GET".into()))?;
    let path = check_path(flags.take("path").unwrap_or_else(|| "/".into()))?;
    let headers = flags.take_all("header");
    if headers.len() > HEADERS_MAX {
        bail!("at most {HEADERS_MAX} --header flags");
    }
    for header in &headers {
        let valid = header
            .split_once(':')
            .is_some_and(|(name, _)| !name.trim().is_empty() && !name.contains(' '))
            && !header.contains(['\r', '\n']);
        if !valid {
            bail!("--header {header:?}: expected 'Name: value'");
        }
    }
    let auth = flags.take("auth");
    if auth.as_ref().is_some_and(|a| !a.contains(':')) {
        bail!("--auth expects USER:PASS");
    }
    let body = match flags.take("body-file") {
        Some(path) => body_file(&path, "--body-file")?,
        None => Vec::new(),
    };
    let mix_body = match flags.take("mix-body-file") {
        Some(path) => Some(body_file(&path, "--mix-body-file")?),
        None => None,
    };
    let mix = match (flags.take("mix"), mix_body) {
        (Some(spec), body) => Some(mix(&spec, body.unwrap_or_default())?),
        (None, Some(_)) => bail!("--mix-body-file needs --mix"),
        (None, None) => None,
    };
    // A HEAD answer has no body whatever its headers say, and the response parser is told so
    // once per run, so HEAD cannot share a run with another method.
    if mix
        .as_ref()
        .is_some_and(|m| method == "HEAD" || m.method == "HEAD")
    {
        bail!("--mix cannot be combined with HEAD");
    }
    let driver = driver(flags.take("io-driver"))?;
    let first_number = match flags.take("first-number") {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= FIRST_NUMBER_MAX)
            .ok_or_else(|| anyhow!("--first-number {v}: expected 0 to {FIRST_NUMBER_MAX}"))?,
        None => 0,
    };
    Ok(Workload {
        method,
        path,
        headers,
        auth,
        body,
        connections,
        duration,
        warmup,
        pipeline,
        cpus,
        driver,
        mix,
        first_number,
    })
}

fn check_method(method: String) -> Result<String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        bail!("--method {method:?}: expected an upper-case token such as GET");
    }
    Ok(method)
}

fn check_path(path: String) -> Result<String> {
    if path.is_empty()
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!("--path {path:?}: expected a request target without spaces");
    }
    Ok(path)
}

fn body_file(path: &str, flag: &str) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{flag} {path}"))?
        .len();
    if size > BODY_BYTES_MAX {
        bail!("{flag} {path}: {size} bytes, over the {BODY_BYTES_MAX}-byte limit");
    }
    std::fs::read(path).with_context(|| format!("{flag} {path}"))
}

/// `--mix PCT:METHOD:PATH` (the path may hold colons, so it is the rest after the second).
fn mix(spec: &str, body: Vec<u8>) -> Result<Mix> {
    let mut parts = spec.splitn(3, ':');
    let (Some(percent), Some(method), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("--mix {spec:?}: expected PCT:METHOD:PATH, e.g. 10:PUT:/Dog/{{n}}");
    };
    let percent = number(percent, "--mix percent", 0, 100)?;
    Ok(Mix {
        percent: u8::try_from(percent).unwrap_or(100),
        method: check_method(method.to_string())?,
        path: check_path(path.to_string())?,
        body,
    })
}

fn target(value: &str) -> Result<Target> {
    let addr = value
        .to_socket_addrs()
        .with_context(|| format!("{value:?}: expected HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("{value:?} resolves to no address"))?;
    Ok(Target {
        addr,
        host: value.to_string(),
    })
}

fn driver(value: Option<String>) -> Result<IoDriver> {
    match value {
        Some(v) => v.parse().map_err(|e: String| anyhow!("--io-driver: {e}")),
        None => Ok(IoDriver::Auto),
    }
}

fn number(value: &str, flag: &str, min: usize, max: usize) -> Result<usize> {
    let n: usize = value
        .parse()
        .map_err(|_| anyhow!("{flag} {value:?}: expected a whole number"))?;
    if !(min..=max).contains(&n) {
        bail!("{flag} {n}: expected {min} to {max}");
    }
    Ok(n)
}

fn seconds(value: &str, flag: &str, max: f64) -> Result<Duration> {
    let s: f64 = value
        .parse()
        .map_err(|_| anyhow!("{flag} {value:?}: expected seconds"))?;
    if !(0.0..=max).contains(&s) {
        bail!("{flag} {s}: expected 0 to {max} seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// A CPU list: `1`, `0,1`, `0-3`, `0-1,4`.
fn cpus(value: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in value.split(',') {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (low, high),
            None => (part, part),
        };
        let low: usize = low
            .trim()
            .parse()
            .map_err(|_| anyhow!("--cpus {value:?}"))?;
        let high: usize = high
            .trim()
            .parse()
            .map_err(|_| anyhow!("--cpus {value:?}"))?;
        if low > high || high >= libc::CPU_SETSIZE as usize {
            bail!("--cpus {value:?}: invalid range {part:?}");
        }
        out.extend(low..=high);
        if out.len() > THREADS_MAX {
            bail!("--cpus {value:?}: more than {THREADS_MAX} CPUs");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `line` and renders the settings that matter, or the error.
    fn check(line: &str, expected: &str) {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        let got = match parse(&args) {
            Ok(Command::Http { target, workload: w, json }) => format!(
                "http {} conns={} dur={:?} warmup={:?} pipeline={} cpus={:?} {} {} headers={:?} json={json}{}{}",
                target.addr, w.connections, w.duration, w.warmup, w.pipeline, w.cpus, w.method, w.path, w.headers,
                w.mix.map(|m| format!(" mix={}:{}:{} body={}", m.percent, m.method, m.path, m.body.len())).unwrap_or_default(),
                if w.first_number > 0 { format!(" first={}", w.first_number) } else { String::new() }
            ),
            Ok(Command::Compare { a, b, rounds, workload: w, .. }) => format!(
                "compare {} {} rounds={rounds} warmup={:?} cpus={:?}",
                a.addr, b.addr, w.warmup, w.cpus
            ),
            Ok(Command::Baseline { listen, cores, driver }) => {
                format!("baseline {listen} cores={cores:?} {driver:?}")
            }
            Ok(Command::FanOut { workload: w, json }) => format!(
                "fanout {:?} {} {} subs={} events={} body={} json={json}",
                w.transport, w.target, w.path, w.subscribers, w.events, w.body_bytes
            ),
            Ok(Command::Chart { input, output }) => format!("chart {input} {output}"),
            Ok(Command::Help) => "help".into(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expected, "{line}");
    }

    #[test]
    fn command_lines() {
        check(
            "ws --target 127.0.0.1:9926 --subscribers 100 --events 1000",
            "fanout WebSocket 127.0.0.1:9926 /Dog/ subs=100 events=1000 body=100 json=false",
        );
        check(
            "sse --target 127.0.0.1:9926 --subscribers 0 --events 1",
            "error: --subscribers 0: expected 1 to 2000",
        );
        check(
            "http --target 127.0.0.1:80 --conns 4 --duration 1.5 --cpus 0 --pipeline=8 --header X-A:1 --json",
            "http 127.0.0.1:80 conns=4 dur=1.5s warmup=0ns pipeline=8 cpus=[0] GET / headers=[\"X-A:1\"] json=true",
        );
        check(
            "http --target 127.0.0.1:80 --conns 4 --duration 1 --cpus 0-1 --threads 3 --method POST --path /x",
            "http 127.0.0.1:80 conns=4 dur=1s warmup=0ns pipeline=1 cpus=[0, 1, 0] POST /x headers=[] json=false",
        );
        check(
            "compare-http --a 127.0.0.1:1 --b 127.0.0.1:2 --rounds 3 --duration 2 --conns 8 --cpus 1,0",
            "compare 127.0.0.1:1 127.0.0.1:2 rounds=3 warmup=1s cpus=[1, 0]",
        );
        check(
            "baseline --listen 127.0.0.1:0 --cores 1 --io-driver epoll",
            "baseline 127.0.0.1:0 cores=Some(1) Epoll",
        );
        check("", "help");
        check("http --help", "help");
        check("mqtt-fanout --subs 10 -h", "help");
        check("chart --in r.json --out c.svg", "chart r.json c.svg");
        check("chart --in r.json", "error: --out is required");
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --mix 10:put:/x",
            "error: --method \"put\": expected an upper-case token such as GET",
        );
        check(
            "http --target 127.0.0.1:80 --conns 4 --duration 1 --cpus 0 --mix 10:PUT:/Dog/{n}?a=b:c",
            "http 127.0.0.1:80 conns=4 dur=1s warmup=0ns pipeline=1 cpus=[0] GET / headers=[] json=false mix=10:PUT:/Dog/{n}?a=b:c body=0",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --mix-body-file Cargo.toml",
            "error: --mix-body-file needs --mix",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --mix 101:PUT:/x",
            "error: --mix percent 101: expected 0 to 100",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --mix 10:PUT",
            "error: --mix \"10:PUT\": expected PCT:METHOD:PATH, e.g. 10:PUT:/Dog/{n}",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --method HEAD --mix 10:PUT:/x",
            "error: --mix cannot be combined with HEAD",
        );
        check(
            "http --target 127.0.0.1:80 --conns 4 --duration 1 --cpus 0 --path /Dog/{n} --first-number 1000000000000",
            "http 127.0.0.1:80 conns=4 dur=1s warmup=0ns pipeline=1 cpus=[0] GET /Dog/{n} headers=[] json=false first=1000000000000",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --first-number -1",
            "error: --first-number -1: expected 0 to 1125899906842624",
        );
        check("http --conns 1 --duration 1", "error: --target is required");
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 3601",
            "error: --duration 3601: expected 0 to 3600 seconds",
        );
        check(
            "http --target 127.0.0.1:1 --conns 0 --duration 1",
            "error: --conns 0: expected 1 to 10000",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --pipeline 300",
            "error: --pipeline 300: expected 1 to 256",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --cpus 0 --threads 2",
            "error: --conns 1 is fewer than the 2 load threads",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --cpus 3-1",
            "error: --cpus \"3-1\": invalid range \"3-1\"",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --bogus 1",
            "error: unknown flag --bogus",
        );
        check(
            "http --target 127.0.0.1:1 --conns 1 --duration 1 --header nocolon",
            "error: --header \"nocolon\": expected 'Name: value'",
        );
        check(
            "baseline --listen 127.0.0.1:0 --io-driver x",
            "error: --io-driver: unknown io driver \"x\"; expected uring, epoll or auto",
        );
    }
}
