//! MQTT workloads (3.1.1 over TCP) against any broker at host:port — tidepool or a peer such as
//! Mosquitto — run one after another in one invocation so the figures share a machine state.
//!
//! - `fanout`: one publisher, `--subs` subscribers on one topic, `--messages` QoS 0 messages;
//!   reports deliveries/s and publish→delivery latency percentiles. `--bystanders N` first
//!   connects N idle clients, each subscribed to a topic of its own (`<topic>-idle-<n>`), held
//!   open through the run: the fan-out rate must not fall with them (a broker that looks at
//!   every connection per message slows down).
//! - `retained`: `--pubs` publishers each writing retained QoS 1 messages to their own topic
//!   `<prefix>/<n>`, `--subs` subscribers on `<prefix>/#`; reports acknowledged publishes/s and
//!   deliveries/s.
//! - `pairs` and `fanin`: the shapes of EMQ's published MQTT benchmarks (emqtt-bench / XMeter),
//!   scaled to one machine: point-to-point pairs (publisher n → its own topic ← subscriber n,
//!   QoS 1), and many publishers on their own topics under one prefix → subscribers on a
//!   wildcard (each gets everything, QoS 0) or one `$share/` group (each message once).
//!
//! Blocking sockets, one thread per client: simple, and bounded by `CLIENTS_MAX`. Every wait has
//! a deadline (`--timeout`), so a broker that drops messages ends the run with a count, not a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Most subscriber or publisher connections in one workload.
pub const CLIENTS_MAX: usize = 5000;
/// Most idle bystander connections (`--bystanders`); each is a socket, not a thread.
pub const BYSTANDERS_MAX: usize = 50_000;
/// Most messages per publisher.
pub const MESSAGES_MAX: u64 = 10_000_000;

pub const USAGE: &str = "\
  tidepool-bench mqtt-fanout --target HOST:PORT [--target HOST:PORT ...] [--topic T] [--subs N] [--messages M] [--bystanders N] [--timeout S] [--auth USER:PASS]
  tidepool-bench mqtt-retained --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--subs N] [--messages M] [--timeout S] [--auth USER:PASS]
  tidepool-bench mqtt-pairs --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--messages M] [--qos 0|1] [--timeout S] [--auth USER:PASS]
  tidepool-bench mqtt-fanin --target HOST:PORT [--target ...] [--prefix P] [--pubs N] [--subs N] [--messages M] [--qos 0|1] [--share G] [--timeout S] [--auth USER:PASS]
";

struct Settings {
    targets: Vec<(String, SocketAddr)>,
    topic: String,
    subs: usize,
    pubs: usize,
    messages: u64,
    /// Idle clients subscribed to other topics during a fan-out.
    bystanders: usize,
    timeout: Duration,
    /// User name and password sent in every CONNECT.
    auth: Option<(String, String)>,
    /// `--qos`: the shape's QoS, where it has a choice.
    qos: Option<u8>,
    /// `--share G`: subscribe as the shared group G.
    share: Option<String>,
}

fn parse(args: &[String], default_topic: &str) -> Result<Settings> {
    let mut s = Settings {
        targets: Vec::new(),
        topic: default_topic.to_string(),
        subs: 1000,
        pubs: 10,
        messages: 1000,
        bystanders: 0,
        timeout: Duration::from_secs(60),
        auth: None,
        qos: None,
        share: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => {
                let addr = value
                    .to_socket_addrs()
                    .with_context(|| format!("--target {value}"))?
                    .next()
                    .ok_or_else(|| anyhow!("--target {value}: no address"))?;
                s.targets.push((value.clone(), addr));
            }
            "--topic" | "--prefix" => s.topic = value.clone(),
            "--subs" => s.subs = value.parse()?,
            "--pubs" => s.pubs = value.parse()?,
            "--messages" => s.messages = value.parse()?,
            "--bystanders" => s.bystanders = value.parse()?,
            "--qos" => match value.parse::<u8>()? {
                q @ 0..=1 => s.qos = Some(q),
                _ => bail!("--qos must be 0 or 1"),
            },
            "--share" => s.share = Some(value.clone()),
            "--timeout" => s.timeout = Duration::from_secs_f64(value.parse()?),
            "--auth" => {
                let (user, password) = value
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--auth expects USER:PASS"))?;
                s.auth = Some((user.to_string(), password.to_string()));
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if s.targets.is_empty() {
        bail!("at least one --target\n{USAGE}");
    }
    if s.subs == 0 || s.subs > CLIENTS_MAX || s.pubs == 0 || s.pubs > CLIENTS_MAX {
        bail!("--subs and --pubs must be 1..={CLIENTS_MAX}");
    }
    if s.bystanders > BYSTANDERS_MAX {
        bail!("--bystanders must be 0..={BYSTANDERS_MAX}");
    }
    if s.messages == 0 || s.messages > MESSAGES_MAX {
        bail!("--messages must be 1..={MESSAGES_MAX}");
    }
    Ok(s)
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// One blocking MQTT 3.1.1 client.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, id: &str, s: &Settings) -> Result<Client> {
        let timeout = s.timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut c = Client {
            stream,
            buf: Vec::with_capacity(8192),
        };
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        // Clean session; user name and password flags when credentials are given.
        let flags = if s.auth.is_some() { 0xc2 } else { 0x02 };
        body.extend_from_slice(&[4, flags, 0, 0]);
        string(&mut body, id);
        if let Some((user, password)) = &s.auth {
            string(&mut body, user);
            string(&mut body, password);
        }
        c.stream.write_all(&packet(0x10, &body))?;
        let (first, rest) = c.next()?;
        if first != 0x20 || rest.get(1) != Some(&0) {
            bail!("{addr}: CONNACK refused ({first:02x} {rest:02x?})");
        }
        Ok(c)
    }

    /// The next packet: (first byte, everything after the length).
    fn next(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some((len, head)) = self.whole() {
                let first = self.buf[0];
                let body = self.buf[head..len].to_vec();
                self.buf.drain(..len);
                return Ok((first, body));
            }
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn whole(&self) -> Option<(usize, usize)> {
        let mut n = 0usize;
        for i in 1..5 {
            let b = *self.buf.get(i)?;
            n |= usize::from(b & 0x7f) << (7 * (i - 1));
            if b & 0x80 == 0 {
                let total = i + 1 + n;
                return (self.buf.len() >= total).then_some((total, i + 1));
            }
        }
        None
    }

    fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let mut body = vec![0, 1];
        string(&mut body, filter);
        body.push(qos);
        self.stream.write_all(&packet(0x82, &body))?;
        self.wait_for(0x90)
    }

    /// Reads until a packet whose first byte is `first` (a SUBACK, a PUBACK).
    fn wait_for(&mut self, first: u8) -> Result<()> {
        while self.next()?.0 != first {}
        Ok(())
    }

    fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        id: u16,
        payload: &[u8],
    ) -> Result<()> {
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        string(&mut body, topic);
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        self.stream
            .write_all(&packet(0x30 | (qos << 1) | u8::from(retain), &body))?;
        Ok(())
    }
}

fn now_us(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How many publishes a group of subscribers waits for.
#[derive(Clone)]
enum Quota {
    /// Every subscriber receives this many (a plain subscription).
    Each(u64),
    /// The group shares one count (a `$share/` group: each message reaches one member).
    Shared(Arc<AtomicU64>, u64),
}

impl Quota {
    fn done(&self, mine: u64) -> bool {
        match self {
            Quota::Each(expected) => mine >= *expected,
            Quota::Shared(count, total) => count.load(Ordering::Relaxed) >= *total,
        }
    }
}

/// How often a member of a shared group looks at the group's count while no message comes.
const SHARED_POLL: Duration = Duration::from_millis(5);

/// Subscribers read until their [`Quota`] is met or the deadline passes; the first retained
/// ones (initial state) are not counted. `filter(n)` is subscriber n's filter. Returns
/// per-delivery latencies in µs.
// Each argument is one knob of the workload; a struct for one private call adds nothing.
#[allow(clippy::too_many_arguments)]
fn spawn_subscribers(
    addr: SocketAddr,
    filter: &dyn Fn(usize) -> String,
    count: usize,
    quota: Quota,
    qos: u8,
    origin: Instant,
    s: &Settings,
    ready: Arc<Barrier>,
) -> Result<Vec<std::thread::JoinHandle<Vec<u64>>>> {
    let mut handles = Vec::with_capacity(count);
    for n in 0..count {
        let mut c = Client::connect(addr, &format!("bench-sub-{n}"), s)?;
        c.subscribe(&filter(n), qos)?;
        if let Quota::Shared(..) = quota {
            c.stream.set_read_timeout(Some(SHARED_POLL))?;
        }
        let ready = ready.clone();
        let deadline = s.timeout;
        let quota = quota.clone();
        handles.push(
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    ready.wait();
                    let mut latencies = Vec::new();
                    let end = Instant::now() + deadline;
                    while !quota.done(latencies.len() as u64) && Instant::now() < end {
                        let (first, body) = match c.next() {
                            Ok(packet) => packet,
                            Err(e) if waited(&e) => continue,
                            Err(_) => break,
                        };
                        if first >> 4 != 3 {
                            continue;
                        }
                        if first & 0x06 != 0 {
                            // QoS 1: acknowledge with the packet id after the topic.
                            let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                            let id = [body[2 + tlen], body[3 + tlen]];
                            let _ = c.stream.write_all(&[0x40, 2, id[0], id[1]]);
                        }
                        if first & 1 == 1 {
                            continue;
                        }
                        // Payload: {"t":<µs since origin>,...}
                        let text = String::from_utf8_lossy(&body);
                        if let Some(t) = text
                            .split("\"t\":")
                            .nth(1)
                            .and_then(|r| r.split([',', '}']).next())
                            .and_then(|v| v.parse::<u64>().ok())
                        {
                            latencies.push(now_us(origin).saturating_sub(t));
                            if let Quota::Shared(count, _) = &quota {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    latencies
                })?,
        );
    }
    Ok(handles)
}

/// Whether a read ended only because its timeout passed (a shared group's poll).
fn waited(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

type Publisher = std::thread::JoinHandle<Result<()>>;

/// Publishers, one thread each, started together by `ready`: publisher p sends `messages`
/// publishes to `topic(p)`; at QoS 1 each waits for its PUBACK before the next (one in flight).
/// Returns the threads, the count of acknowledged (or, at QoS 0, sent) publishes, and when the
/// first publisher started (µs after `origin`): the run's start. The thread that released the
/// barrier may run only after the publishers have done much of their work (every load thread
/// shares the load CPU), so its own clock reading would start the run late.
// Each argument is one knob of the workload; a struct for one private call adds nothing.
#[allow(clippy::too_many_arguments)]
fn spawn_publishers(
    addr: SocketAddr,
    topic: &dyn Fn(usize) -> String,
    qos: u8,
    retain: bool,
    origin: Instant,
    s: &Settings,
    ready: Arc<Barrier>,
) -> Result<(Vec<Publisher>, Arc<AtomicU64>, Arc<AtomicU64>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let mut pubs = Vec::with_capacity(s.pubs);
    for p in 0..s.pubs {
        let mut c = Client::connect(addr, &format!("bench-pub-{p}"), s)?;
        let topic = topic(p);
        let ready = ready.clone();
        let (acked, first) = (acked.clone(), first.clone());
        let messages = s.messages;
        pubs.push(std::thread::Builder::new().stack_size(128 << 10).spawn(
            move || -> Result<()> {
                ready.wait();
                first.fetch_min(now_us(origin), Ordering::Relaxed);
                for n in 0..messages {
                    let payload = format!("{{\"t\":{},\"n\":{n}}}", now_us(origin));
                    c.publish(
                        &topic,
                        qos,
                        retain,
                        (n % 65535 + 1) as u16,
                        payload.as_bytes(),
                    )?;
                    if qos > 0 {
                        c.wait_for(0x40)?;
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            },
        )?);
    }
    Ok((pubs, acked, first))
}

/// `--bystanders` idle clients, each subscribed to its own topic beside `s.topic`; they stay
/// connected while the returned clients live.
fn hold_bystanders(addr: SocketAddr, s: &Settings) -> Result<Vec<Client>> {
    let mut held = Vec::with_capacity(s.bystanders);
    for n in 0..s.bystanders {
        let mut c = Client::connect(addr, &format!("bench-idle-{n}"), s)
            .with_context(|| format!("bystander {n} (raise the fd limit: ulimit -n)"))?;
        c.subscribe(&format!("{}-idle-{n}", s.topic), 0)?;
        held.push(c);
    }
    Ok(held)
}

fn report(
    name: &str,
    target: &str,
    elapsed: Duration,
    expected: u64,
    mut latencies: Vec<u64>,
    extra: &str,
) {
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    println!(
        "{name:<14} {target:<22} delivered {delivered}/{expected} in {:.2}s = {:>9.0}/s  latency p50 {} µs p99 {} µs max {} µs{extra}",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );
}

pub fn fanout(args: &[String]) -> Result<()> {
    let s = parse(args, "Dog/bench")?;
    for (name, addr) in &s.targets {
        let bystanders = hold_bystanders(*addr, &s)?;
        let origin = Instant::now();
        let ready = Arc::new(Barrier::new(s.subs + 1));
        let topic = s.topic.clone();
        let handles = spawn_subscribers(
            *addr,
            &|_| topic.clone(),
            s.subs,
            Quota::Each(s.messages),
            0,
            origin,
            &s,
            ready.clone(),
        )?;
        let mut publisher = Client::connect(*addr, "bench-pub", &s)?;
        ready.wait();
        let start = Instant::now();
        for n in 0..s.messages {
            let payload = format!("{{\"t\":{},\"n\":{n}}}", now_us(origin));
            publisher.publish(&s.topic, 0, false, 0, payload.as_bytes())?;
        }
        let all = join(handles)?;
        report(
            "fanout",
            name,
            start.elapsed(),
            s.messages * s.subs as u64,
            all,
            &format!("  ({} subs, {} bystanders)", s.subs, bystanders.len()),
        );
        drop(bystanders);
    }
    Ok(())
}

fn join(handles: Vec<std::thread::JoinHandle<Vec<u64>>>) -> Result<Vec<u64>> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow!("subscriber thread panicked"))?,
        );
    }
    Ok(all)
}

/// Runs `pubs` publishers against `subs` subscribers once per target and reports deliveries/s
/// and acknowledged publishes/s: the shape of `retained`, `pairs` and `fanin`.
struct Shape<'a> {
    label: &'a str,
    /// Subscriber n's filter.
    filter: &'a dyn Fn(usize) -> String,
    /// Publisher p's topic.
    topic: &'a dyn Fn(usize) -> String,
    /// Deliveries expected in all: per subscriber (`Each`) or for the whole group (`Shared`).
    expected: u64,
    shared: bool,
    pub_qos: u8,
    sub_qos: u8,
    retain: bool,
}

fn run_shape(s: &Settings, shape: &Shape) -> Result<()> {
    for (name, addr) in &s.targets {
        let origin = Instant::now();
        let ready = Arc::new(Barrier::new(s.subs + s.pubs + 1));
        let (quota, total) = if shape.shared {
            (
                Quota::Shared(Arc::new(AtomicU64::new(0)), shape.expected),
                shape.expected,
            )
        } else {
            (Quota::Each(shape.expected), shape.expected * s.subs as u64)
        };
        let handles = spawn_subscribers(
            *addr,
            shape.filter,
            s.subs,
            quota,
            shape.sub_qos,
            origin,
            s,
            ready.clone(),
        )?;
        let (pubs, acked, first) = spawn_publishers(
            *addr,
            shape.topic,
            shape.pub_qos,
            shape.retain,
            origin,
            s,
            ready.clone(),
        )?;
        ready.wait();
        let released = Instant::now();
        for p in pubs {
            p.join()
                .map_err(|_| anyhow!("publisher thread panicked"))??;
        }
        // Read once every publisher has ended, so each one's start is in.
        let start = match first.load(Ordering::Relaxed) {
            u64::MAX => released, // no publisher (`--pubs 0`)
            us => origin + Duration::from_micros(us),
        };
        let publish_s = start.elapsed().as_secs_f64();
        let all = join(handles)?;
        let acks = acked.load(Ordering::Relaxed);
        report(
            shape.label,
            name,
            start.elapsed(),
            total,
            all,
            &format!(
                "  ({} pubs × {} subs; {acks} acked publishes = {:.0}/s)",
                s.pubs,
                s.subs,
                acks as f64 / publish_s
            ),
        );
    }
    Ok(())
}

/// `--pubs` publishers each writing retained QoS 1 messages to `<prefix>/bench-<p>`, `--subs`
/// subscribers on `<prefix>/#`.
pub fn retained(args: &[String]) -> Result<()> {
    let mut s = parse(args, "Dog")?;
    if s.subs == 1000 {
        s.subs = 10;
    }
    let filter = format!("{}/#", s.topic);
    let prefix = s.topic.clone();
    run_shape(
        &s,
        &Shape {
            label: "retained",
            filter: &|_| filter.clone(),
            topic: &|p| format!("{prefix}/bench-{p}"),
            expected: s.messages * s.pubs as u64,
            shared: false,
            pub_qos: 1,
            sub_qos: 0,
            retain: true,
        },
    )
}

/// EMQ's point-to-point shape: `--pubs` pairs, publisher n → `<prefix>/p2p-<n>` ← subscriber n,
/// QoS `--qos` both ways (default 1).
pub fn pairs(args: &[String]) -> Result<()> {
    let mut s = parse(args, "Dog")?;
    s.subs = s.pubs;
    let prefix = s.topic.clone();
    let qos = s.qos.unwrap_or(1);
    run_shape(
        &s,
        &Shape {
            label: "pairs",
            filter: &|n| format!("{prefix}/p2p-{n}"),
            topic: &|n| format!("{prefix}/p2p-{n}"),
            expected: s.messages,
            shared: false,
            pub_qos: qos,
            sub_qos: qos,
            retain: false,
        },
    )
}

/// EMQ's wildcard shapes: `--pubs` publishers, each on `<prefix>/fanin-<p>`, `--subs`
/// subscribers on `<prefix>/#` (each gets every message), or with `--share G` one shared group
/// `$share/G/<prefix>/#` (each message reaches one member). QoS `--qos` (default 0).
pub fn fanin(args: &[String]) -> Result<()> {
    let mut s = parse(args, "Dog")?;
    if s.subs == 1000 {
        s.subs = 10;
    }
    let prefix = s.topic.clone();
    let qos = s.qos.unwrap_or(0);
    let filter = match &s.share {
        Some(group) => format!("$share/{group}/{prefix}/#"),
        None => format!("{prefix}/#"),
    };
    run_shape(
        &s,
        &Shape {
            label: if s.share.is_some() {
                "fanin-shared"
            } else {
                "fanin"
            },
            filter: &|_| filter.clone(),
            topic: &|p| format!("{prefix}/fanin-{p}"),
            expected: s.messages * s.pubs as u64,
            shared: s.share.is_some(),
            pub_qos: qos,
            sub_qos: qos,
            retain: false,
        },
    )
}
