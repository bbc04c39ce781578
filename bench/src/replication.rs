//! `replication-lag`: writes/s on one node, and how long a write on it takes to be readable on
//! the others (replication lag p50/p99), against running tidepool nodes over REST.
//!
//! ```text
//! tidepool-bench replication-lag --writer 127.0.0.1:9926 --readers 127.0.0.2:9926,127.0.0.3:9926 \
//!     [--path /Dog] [--writes 5000] [--conns 8] [--probes 500]
//! ```
//!
//! Phase 1: `--conns` keep-alive connections PUT `--writes` records as fast as the writer
//! acknowledges them (closed loop) → writes/s. Phase 2: `--probes` times, one PUT on the writer,
//! then each reader is polled (GET, every 0.2 ms) until it returns that record → lag from the
//! acknowledgement to the first successful read, per reader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A response head is at most this big.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// A response body is at most this big.
const BODY_BYTES_MAX: usize = 16 << 20;

struct Conn {
    host: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(host: &str) -> Result<Conn> {
        let stream = TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            host: host.to_string(),
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and returns (status, body).
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        self.stream.write_all(&out)?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                if length > BODY_BYTES_MAX {
                    bail!("response body of {length} bytes");
                }
                while self.buf.len() < head_len + length {
                    self.fill()?;
                }
                let body = self.buf[head_len..head_len + length].to_vec();
                self.buf.drain(..head_len + length);
                return Ok((status, body));
            }
            if self.buf.len() > HEAD_BYTES_MAX {
                bail!("response head over {HEAD_BYTES_MAX} bytes");
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn lag(args: &[String]) -> Result<()> {
    let writer = flag(args, "--writer").ok_or_else(|| anyhow!("--writer host:port is required"))?;
    let readers: Vec<String> = flag(args, "--readers")
        .ok_or_else(|| anyhow!("--readers host:port,... is required"))?
        .split(',')
        .map(str::to_string)
        .collect();
    let path = flag(args, "--path").unwrap_or("/Dog");
    let writes: usize = flag(args, "--writes").unwrap_or("5000").parse()?;
    let conns: usize = flag(args, "--conns")
        .unwrap_or("8")
        .parse::<usize>()?
        .max(1);
    let probes: usize = flag(args, "--probes").unwrap_or("500").parse()?;
    let run = std::process::id();

    // Phase 1: throughput on the writer.
    let started = Instant::now();
    let per_conn = writes.div_ceil(conns);
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let writer = writer.to_string();
            let path = path.to_string();
            std::thread::spawn(move || -> Result<usize> {
                let mut conn = Conn::open(&writer)?;
                let mut done = 0;
                for i in 0..per_conn {
                    let body = format!(r#"{{"name":"bench-{c}-{i}","n":{i}}}"#);
                    let (status, _) =
                        conn.request("PUT", &format!("{path}/b{run}-{c}-{i}"), body.as_bytes())?;
                    if status / 100 == 2 {
                        done += 1;
                    }
                }
                Ok(done)
            })
        })
        .collect();
    let mut acknowledged = 0;
    for h in handles {
        acknowledged += h.join().map_err(|_| anyhow!("writer thread panicked"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "writes: {acknowledged} acknowledged in {seconds:.2} s = {:.0} writes/s ({conns} connections)",
        acknowledged as f64 / seconds
    );

    // Phase 2: lag from acknowledgement to first read on each reader.
    let mut w = Conn::open(writer)?;
    let mut rs: Vec<Conn> = readers
        .iter()
        .map(|r| Conn::open(r))
        .collect::<Result<_>>()?;
    let mut lags_ms: Vec<Vec<f64>> = vec![Vec::with_capacity(probes); rs.len()];
    for i in 0..probes {
        let id = format!("{path}/lag{run}-{i}");
        let marker = format!("lag-{i}");
        let body = format!(r#"{{"name":"{marker}"}}"#);
        let (status, _) = w.request("PUT", &id, body.as_bytes())?;
        if status / 100 != 2 {
            bail!("PUT {id} answered {status}");
        }
        let acked = Instant::now();
        for (r, lags) in rs.iter_mut().zip(lags_ms.iter_mut()) {
            loop {
                let (status, body) = r.request("GET", &id, b"")?;
                if status == 200
                    && body
                        .windows(marker.len())
                        .any(|win| win == marker.as_bytes())
                {
                    lags.push(acked.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    bail!("{id} not on {} after 30 s", r.host);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    for (reader, lags) in readers.iter().zip(lags_ms.iter_mut()) {
        lags.sort_by(f64::total_cmp);
        println!(
            "lag to {reader}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} writes",
            percentile(lags, 0.50),
            percentile(lags, 0.99),
            lags.last().copied().unwrap_or(f64::NAN),
            lags.len()
        );
    }
    Ok(())
}
