//! The baseline responder: the least an HTTP/1.1 server on tidepool-io can do, as the ceiling the
//! server's HTTP path is measured against.
//!
//! It owns one accept loop per core on SO_REUSEPORT listeners (the server's layout and ring
//! settings), and per connection: read, split every complete request in the buffer, append one
//! fixed `200 OK` answer per request, write the batch once. It never looks at paths, headers or
//! bodies beyond what framing needs, and never allocates per request. It runs until SIGINT or
//! SIGTERM.

use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::ops::ControlFlow;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tidepool_io::{
    affinity_cpus, bind_listeners, sleep, spawn, start_cores, IoDriver, Listener, RuntimeConfig,
    Shutdown, Stream,
};

use crate::http1::{ParseError, Request, RequestParser};

/// Initial read buffer per connection; it grows only while one request head is larger.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Free space asked of the read buffer before each read.
const READ_SPARE_BYTES: usize = 4 * 1024;
/// Initial answer buffer per connection: room for a deep pipeline of short answers.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

const STATUS_LINE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n";
const BODY: &[u8] = b"OK";

/// Appends the fixed answer to `request`.
fn push_answer(out: &mut Vec<u8>, request: Request) {
    out.extend_from_slice(STATUS_LINE);
    if request.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if request.http10 {
        // An HTTP/1.0 client keeps the connection only when the answer says so.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !request.head {
        out.extend_from_slice(BODY);
    }
}

/// Answer to a request the framing rejects; the connection closes after it.
fn push_error(out: &mut Vec<u8>, error: ParseError) {
    let answer: &[u8] = match error {
        ParseError::HeadTooLarge => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        _ => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    };
    out.extend_from_slice(answer);
}

/// Binds, prints `listening on ADDR` on stdout, and serves until SIGINT or SIGTERM.
pub fn run(listen: SocketAddr, cores: Option<usize>, driver: IoDriver) -> Result<()> {
    let allowed = affinity_cpus();
    let cores = cores.unwrap_or(allowed.len());
    if cores > allowed.len() {
        bail!(
            "--cores {cores}: only {} CPU(s) allowed here ({allowed:?}); one core per CPU",
            allowed.len()
        );
    }
    let cpus = allowed[..cores].to_vec();
    let (listeners, bound) = bind_listeners(listen, cores, false, std::time::Duration::ZERO)?;
    let listeners: Mutex<Vec<Option<StdTcpListener>>> =
        Mutex::new(listeners.into_iter().map(Some).collect());

    let shutdown = Shutdown::new();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let trigger = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if received.next().is_some() {
                trigger.trigger();
            }
            // A second signal means the graceful stop is not wanted (or stuck): leave at once.
            if received.next().is_some() {
                std::process::exit(130);
            }
        })
        .context("starting the signal thread")?;

    let mut config = RuntimeConfig::new(cpus.clone(), driver);
    config.thread_name = "baseline".into();
    let (driver, handles) = start_cores(&config, move |ctx| {
        let listener = listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(ctx.core.0)
            .and_then(Option::take);
        serve(listener, shutdown.clone())
    })
    .context("starting cores")?;
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    eprintln!("baseline: {cores} core(s) on CPU(s) {cpus:?}, io driver {driver}");
    for handle in handles {
        let _ = handle.join();
    }
    eprintln!("baseline: stopped");
    Ok(())
}

/// One core: accepts until shutdown; connections still open are dropped with the runtime.
async fn serve(listener: Option<StdTcpListener>, shutdown: Shutdown) {
    let Some(listener) = listener else {
        return;
    };
    let listener = match Listener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("baseline: cannot adopt listener: {e}");
            return;
        }
    };
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => spawn(connection(stream)),
                Err(_) => sleep(ACCEPT_ERROR_PAUSE).await,
            }
        }
    };
    first_of(accept_loop, shutdown.wait()).await;
}

/// Waits for whichever future finishes first and drops the other.
async fn first_of(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn connection(mut stream: Stream) {
    let _ = stream.set_nodelay(true);
    let mut parser = RequestParser::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(WRITE_BUFFER_BYTES);
    loop {
        let (result, buf) = stream.read_append(input, READ_SPARE_BYTES).await;
        input = buf;
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        let parsed = parser.parse_all(&input, |request| {
            push_answer(&mut output, request);
            if request.close {
                close = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        match parsed {
            Ok(used) => drop(input.drain(..used)),
            Err(error) => {
                push_error(&mut output, error);
                close = true;
            }
        }
        if !output.is_empty() {
            let (result, buf) = stream.write_all(output).await;
            output = buf;
            output.clear();
            if result.is_err() {
                return;
            }
        }
        if close {
            let _ = stream.shutdown_write().await;
            return;
        }
    }
}
