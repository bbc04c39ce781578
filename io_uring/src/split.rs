//! Splitting one connection into a read half and a write half, so two tasks on the same core can
//! use it at once: a reader waiting on the peer while a writer drains a queue (MQTT sessions,
//! MQTT over WebSocket).
//!
//! [`Split`] is implemented by the transports that can be split: the plain [`Stream`] (monoio's
//! own split of the socket: one submitted operation per direction, nothing else shared) and
//! [`crate::TlsStream`] over a splittable transport (see `tls.rs`). [`ReadBytes`]/[`WriteBytes`]
//! are what the halves offer, so layers stack (TLS over TCP, WebSocket framing over either).
//! [`ReadHalf`] makes reads safe to cancel: the read in progress lives in the half, not in the
//! caller's future, so a read dropped by [`crate::race`] is resumed by the next call and no byte
//! the kernel delivered is lost. [`SharedWriter`] lets a layer whose reading must sometimes write
//! (TLS alerts and key updates, WebSocket pongs) share the write half with the writer task, one
//! whole write at a time. This module never parses a protocol byte.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Poll, Waker};

use monoio::io::{AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use crate::{Spares, Stream, Transport};

/// The reading direction of a split connection.
// The futures are not `Send` on purpose: a connection lives on one core.
#[allow(async_fn_in_trait)]
pub trait ReadBytes: 'static {
    /// Reads into the spare capacity of `buf` (after its length), growing it by `min_spare` when
    /// less is free. Returns the bytes appended; 0 means the peer closed. Dropping the future may
    /// lose bytes; wrap the reader in a [`ReadHalf`] when reads race other events.
    async fn read_append(&mut self, buf: Vec<u8>, min_spare: usize)
        -> (io::Result<usize>, Vec<u8>);

    /// Whether [`ReadBytes::readable`] waits for data. False by default: the reader has no
    /// readiness (TLS, WebSocket framing: buffered state of their own), and a read does the
    /// waiting, buffer in hand.
    fn has_readiness(&self) -> bool {
        false
    }

    /// With [`ReadBytes::has_readiness`]: completes when a read would find data (or the end of
    /// the stream, or an error), holding no buffer meanwhile; dropping it loses nothing.
    /// Without: completes at once.
    async fn readable(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The writing direction of a split connection.
#[allow(async_fn_in_trait)]
pub trait WriteBytes: 'static {
    /// Writes all of `buf`, then hands it back (its length unchanged).
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Half-closes: the peer reads end-of-stream after what was written.
    async fn shutdown_write(&mut self) -> io::Result<()>;
}

/// A transport that can be split into its two directions.
pub trait Split: Transport + Sized + 'static {
    type Read: ReadBytes;
    type Write: WriteBytes;
    fn into_split(self) -> (Self::Read, Self::Write);
}

/// The reading direction of a plain TCP stream.
pub struct TcpRead(OwnedReadHalf<TcpStream>);
/// The writing direction of a plain TCP stream; dropping it half-closes the socket.
pub struct TcpWrite(OwnedWriteHalf<TcpStream>);

impl Split for Stream {
    type Read = TcpRead;
    type Write = TcpWrite;

    fn into_split(self) -> (TcpRead, TcpWrite) {
        let (read, write) = self.into_inner().into_split();
        (TcpRead(read), TcpWrite(write))
    }
}

impl ReadBytes for TcpRead {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        crate::net::read_append(&mut self.0, buf, min_spare).await
    }

    fn has_readiness(&self) -> bool {
        true
    }

    // monoio's future itself, not an `async fn` around it: an idle connection waits in it, and
    // a wrapper would add its own state to every one (docs/design.md, "Idle connections").
    #[allow(clippy::manual_async_fn)]
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        // SAFETY: monoio's split halves share the stream through this `UnsafeCell` and use it
        // the same way for their own reads and writes (one core, one thread); a readiness poll
        // only reads the descriptor.
        let stream = unsafe { &*self.0 .0.get() };
        stream.readable(false)
    }
}

impl WriteBytes for TcpWrite {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        crate::net::write_all(&mut self.0, buf).await
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// Bytes asked for per read by a [`ReadHalf`] at most, unless told otherwise.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes asked for per read at least. A reader without readiness (TLS) waits in a read that holds
/// a buffer of its current read size, so this is most of what such an idle connection costs.
pub const READ_CHUNK_MIN_BYTES: usize = 512;
/// Most read buffers a core keeps spare for its readers' next reads, and the bytes they may hold
/// together; a larger buffer than [`READ_CHUNK_BYTES`] is freed rather than kept. As many as a
/// core's busy connections hold at once, so a round of them does not allocate (see `Spares`).
const SPARE_READ_BUFFERS_MAX: usize = 1024;
const SPARE_READ_BYTES_MAX: usize = 1 << 20;

thread_local! {
    /// This core's spare read buffers.
    static SPARE_READ_BUFFERS: Spares = const { Spares::new(SPARE_READ_BUFFERS_MAX, READ_CHUNK_BYTES, SPARE_READ_BYTES_MAX) };
}

/// A read buffer from this core's spares (empty), or a new one without capacity.
fn take_spare() -> Vec<u8> {
    SPARE_READ_BUFFERS.with(|spares| spares.take(0))
}

/// Keeps `buf` for another reader of this core when it is of the usual size and there is room.
fn give_back(buf: Vec<u8>) {
    SPARE_READ_BUFFERS.with(|spares| spares.give_back(buf));
}

type PendingRead<R> = Pin<Box<dyn Future<Output = (R, Vec<u8>, io::Result<usize>)>>>;

/// Two variants, the reader's absence folded into `Idle`: so the state is 16 bytes for a
/// pointer-sized reader (`Idle` fits beside the box's non-null pointer), not 24 with a tag of
/// its own (docs/design.md, "Idle connections").
enum ReadState<R> {
    /// Between reads. `None` when a read future panicked or was leaked mid-swap: the half is
    /// then unusable.
    Idle(Option<R>),
    Reading(PendingRead<R>),
}

/// A reader whose reads may be cancelled without losing bytes.
///
/// Bytes read collect in [`ReadHalf::buffered`]; the caller consumes them from the front (e.g.
/// with `drain`). A read in progress belongs to the half: when the future of [`ReadHalf::fill`]
/// is dropped, the read goes on and the next `fill` picks up its result.
///
/// With nothing buffered, a reader with readiness ([`ReadBytes::readable`], plain TCP) holds no
/// buffer while it waits: its buffer goes to its core's spares, it waits for data without one,
/// then reads into a spare. Only a partial message (bytes not yet consumed) is kept between
/// reads; a quiet connection so costs no buffer (docs/design.md, "Idle connections").
///
/// Read sizes adapt: a read that fills its buffer doubles the next one (up to the chunk given),
/// a read that uses under a quarter halves it (down to [`READ_CHUNK_MIN_BYTES`]).
pub struct ReadHalf<R> {
    state: ReadState<R>,
    buffered: Vec<u8>,
    // 4 bytes each: an idle MQTT connection keeps its read half (docs/design.md).
    chunk_bytes_max: u32,
    chunk_bytes: u32,
}

impl<R: ReadBytes> ReadHalf<R> {
    pub fn new(reader: R) -> Self {
        Self::with_chunk(reader, READ_CHUNK_BYTES)
    }

    /// `chunk_bytes`: how much one read asks the kernel (or the layer below) for, at most.
    pub fn with_chunk(reader: R, chunk_bytes: usize) -> Self {
        let chunk_bytes_max = chunk_bytes.max(1);
        Self {
            state: ReadState::Idle(Some(reader)),
            buffered: Vec::new(),
            chunk_bytes_max: narrow(chunk_bytes_max),
            chunk_bytes: narrow(chunk_bytes_max.min(READ_CHUNK_MIN_BYTES)),
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&mut self) -> &mut Vec<u8> {
        &mut self.buffered
    }

    /// Bytes of buffer this half holds: what it has read and not consumed with room for more,
    /// and a read in flight's buffer (counted at its requested size).
    pub fn held_bytes(&self) -> usize {
        let reading = match self.state {
            ReadState::Reading(_) => self.chunk_bytes as usize,
            _ => 0,
        };
        self.buffered.capacity() + reading
    }

    /// What [`ReadHalf::held_bytes`] will be while the next [`ReadHalf::fill`] waits: nothing
    /// when nothing is buffered and the reader has readiness.
    pub fn held_while_waiting(&self) -> usize {
        match &self.state {
            ReadState::Idle(Some(reader)) if self.buffered.is_empty() && reader.has_readiness() => {
                0
            }
            ReadState::Idle(Some(_)) => self.buffered.capacity() + self.chunk_bytes as usize,
            _ => self.held_bytes(),
        }
    }

    /// Reads at least one more byte onto [`ReadHalf::buffered`]; 0 means the peer closed.
    /// Cancel-safe (see the type's documentation).
    ///
    /// Not an `async fn`, which would keep `self` twice (the argument and its local): an idle
    /// connection's task holds this future while it waits (docs/design.md, "Idle connections").
    #[allow(clippy::manual_async_fn)]
    pub fn fill(&mut self) -> impl Future<Output = io::Result<usize>> + '_ {
        async move {
            if self.buffered.is_empty() {
                if let ReadState::Idle(Some(reader)) = &self.state {
                    // Nothing to keep: the buffer goes back, and a reader with readiness waits
                    // without one.
                    give_back(std::mem::take(&mut self.buffered));
                    reader.readable().await?;
                }
            }
            if let ReadState::Idle(idle) = &mut self.state {
                let Some(mut reader) = idle.take() else {
                    return Err(gone());
                };
                let spare = self.chunk_bytes as usize;
                // All consumed (and given back above): read into a spare; else into a new chunk
                // appended to what is kept.
                let chunk = if self.buffered.is_empty() {
                    take_spare()
                } else {
                    Vec::new()
                };
                self.state = ReadState::Reading(Box::pin(async move {
                    let (result, chunk) = reader.read_append(chunk, spare).await;
                    (reader, chunk, result)
                }));
            }
            let done = poll_fn(|cx| match &mut self.state {
                ReadState::Reading(pending) => pending.as_mut().poll(cx).map(Some),
                _ => Poll::Ready(None),
            })
            .await;
            let Some((reader, chunk, result)) = done else {
                return Err(gone());
            };
            if let Ok(n) = result {
                let next =
                    next_chunk_bytes(self.chunk_bytes as usize, n, self.chunk_bytes_max as usize);
                self.chunk_bytes = narrow(next);
            }
            if matches!(result, Ok(n) if n > 0) {
                if self.buffered.is_empty() {
                    give_back(std::mem::replace(&mut self.buffered, chunk));
                } else {
                    self.buffered.extend_from_slice(&chunk);
                    give_back(chunk);
                }
            } else {
                give_back(chunk);
            }
            self.state = ReadState::Idle(Some(reader));
            result
        }
    }
}

/// A read size as the read half keeps it (reads larger than 4 GiB are not asked for).
fn narrow(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The next read's size after a read of `chunk` bytes that returned `n`.
fn next_chunk_bytes(chunk: usize, n: usize, chunk_max: usize) -> usize {
    if n >= chunk {
        (chunk * 2).min(chunk_max)
    } else if n < chunk / 4 {
        (chunk / 2).max(READ_CHUNK_MIN_BYTES).min(chunk_max)
    } else {
        chunk
    }
}

fn gone() -> io::Error {
    io::Error::other("read half lost its reader")
}

/// A `ReadHalf` is itself a reader, so layers can stack on a cancel-safe one.
impl<R: ReadBytes> ReadBytes for ReadHalf<R> {
    async fn read_append(
        &mut self,
        mut buf: Vec<u8>,
        _min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        if self.buffered.is_empty() {
            if let Err(e) = self.fill().await {
                return (Err(e), buf);
            }
        }
        let n = self.buffered.len();
        buf.append(&mut self.buffered);
        (Ok(n), buf)
    }
}

/// A write half shared by the tasks that may write on one connection; [`SharedWriter::lock`]
/// hands it to one of them at a time, so whole writes never interleave. It is a single-core
/// async lock: waiting yields to the executor, never blocks the thread.
pub struct SharedWriter<W> {
    slot: Cell<Option<W>>,
    waiters: RefCell<Vec<Waker>>,
}

impl<W> SharedWriter<W> {
    pub fn new(writer: W) -> Self {
        Self {
            slot: Cell::new(Some(writer)),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Waits until no other holder writes, then hands out the writer until the guard drops
    /// (also when the holding future is cancelled).
    pub async fn lock(&self) -> WriteGuard<'_, W> {
        let writer = poll_fn(|cx| match self.slot.take() {
            Some(w) => Poll::Ready(w),
            None => {
                let mut waiters = self.waiters.borrow_mut();
                // Bounded by the holders that exist: one entry per distinct waiting task.
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await;
        WriteGuard {
            lock: self,
            writer: Some(writer),
        }
    }
}

pub struct WriteGuard<'a, W> {
    lock: &'a SharedWriter<W>,
    writer: Option<W>,
}

impl<W> Deref for WriteGuard<'_, W> {
    type Target = W;
    fn deref(&self) -> &W {
        // Only `Drop` takes it out.
        self.writer.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<W> DerefMut for WriteGuard<'_, W> {
    fn deref_mut(&mut self) -> &mut W {
        self.writer.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<W> Drop for WriteGuard<'_, W> {
    fn drop(&mut self) {
        self.lock.slot.set(self.writer.take());
        for waker in self.lock.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{race, Either, Listener};
    use std::time::Duration;

    /// Runs `body` on the io_uring driver (where a dropped read is a cancelled kernel operation,
    /// the case that loses bytes without `ReadHalf`) when the kernel allows it, and on epoll.
    fn on_each_driver<F, Fut>(body: F) -> Vec<Fut::Output>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future,
    {
        let mut out = Vec::new();
        if let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            out.push(rt.block_on(body()));
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        out.push(rt.block_on(body()));
        out
    }

    async fn pair() -> (Stream, Stream) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        let listener = Listener::from_std(std).unwrap();
        let client = Stream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Sends `pieces` from the peer with pauses between them while the reader races every read
    /// against a short timer (cancelling most reads); returns everything the reader collected.
    fn check_cancelled_reads(pieces: Vec<Vec<u8>>, chunk_bytes: usize, expected: Vec<u8>) {
        let results = on_each_driver(|| {
            let pieces = pieces.clone();
            async move {
                let (mut client, server) = pair().await;
                let (read, _write) = server.into_split();
                let mut half = ReadHalf::with_chunk(read, chunk_bytes);
                let sender = monoio::spawn(async move {
                    for piece in pieces {
                        crate::sleep(Duration::from_millis(3)).await;
                        let (r, _) = client.write_all(piece).await;
                        r.unwrap();
                    }
                    client.shutdown_write().await.unwrap();
                    client
                });
                // Bounded: each piece needs at most a few completed reads.
                for _ in 0..100_000 {
                    match race(half.fill(), crate::sleep(Duration::from_micros(500))).await {
                        Either::Left(Ok(0)) => break,
                        Either::Left(r) => {
                            r.unwrap();
                        }
                        Either::Right(()) => {}
                    }
                }
                drop(sender.await);
                std::mem::take(half.buffered())
            }
        });
        for got in results {
            assert!(
                got == expected,
                "{} bytes collected, {} sent",
                got.len(),
                expected.len()
            );
        }
    }

    /// Feeds read results `reads` to the sizing rule from the starting size; `expected` are the
    /// sizes after each read.
    fn check_sizes(chunk_max: usize, reads: &[usize], expected: &[usize]) {
        let mut chunk = chunk_max.min(READ_CHUNK_MIN_BYTES);
        let got: Vec<usize> = reads
            .iter()
            .map(|&n| {
                chunk = next_chunk_bytes(chunk, n, chunk_max);
                chunk
            })
            .collect();
        assert_eq!(got, expected, "reads {reads:?}");
    }

    #[test]
    fn read_sizes_grow_when_full_and_shrink_when_idle() {
        check_sizes(
            16 * 1024,
            &[512, 1024, 2048, 4096, 8192, 16384, 16384],
            &[1024, 2048, 4096, 8192, 16384, 16384, 16384],
        );
        check_sizes(
            16 * 1024,
            &[512, 1024, 100, 100, 100],
            &[1024, 2048, 1024, 512, 512],
        );
        check_sizes(16 * 1024, &[200, 0], &[512, 512]);
        check_sizes(7, &[7, 1, 7], &[7, 7, 7]);
        check_sizes(4096, &[512, 1024, 2048, 4096], &[1024, 2048, 4096, 4096]);
    }

    #[test]
    fn cancelled_reads_lose_nothing() {
        let pieces: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; usize::from(i) * 97 + 1])
            .collect();
        let all: Vec<u8> = pieces.concat();
        check_cancelled_reads(pieces.clone(), 16 * 1024, all.clone());
        check_cancelled_reads(pieces, 7, all);
        check_cancelled_reads(vec![], 16, vec![]);
    }

    #[test]
    fn a_waiting_reader_holds_no_buffer() {
        let results = on_each_driver(|| async {
            let (mut client, server) = pair().await;
            let (read, _write) = server.into_split();
            let mut half = ReadHalf::new(read);
            let mut held = Vec::new();
            for round in 0..3u8 {
                // Nothing sent yet: the fill waits for readiness, without a buffer.
                let waited = race(half.fill(), crate::sleep(Duration::from_millis(20))).await;
                assert!(matches!(waited, Either::Right(())), "round {round}");
                held.push(half.held_bytes());
                let (r, _) = client.write_all(vec![round; 3]).await;
                r.unwrap();
                assert_eq!(half.fill().await.unwrap(), 3);
                assert_eq!(half.buffered().as_slice(), &[round; 3]);
                // A partial message is kept; consumed, its buffer goes back.
                assert!(half.held_bytes() >= 3);
                half.buffered().clear();
            }
            held
        });
        for held in results {
            assert_eq!(held, vec![0, 0, 0]);
        }
    }

    #[test]
    fn halves_work_at_once() {
        // The server echoes through its two halves from two tasks: a reader task forwards what
        // it reads to the writer task while the client is still sending.
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let results = on_each_driver(|| {
            let payload = payload.clone();
            async move {
                let (mut client, server) = pair().await;
                let (read, write) = server.into_split();
                let writer = std::rc::Rc::new(SharedWriter::new(write));
                let echo_writer = writer.clone();
                let echo = monoio::spawn(async move {
                    let mut half = ReadHalf::new(read);
                    while half.fill().await.unwrap() > 0 {
                        let bytes = std::mem::take(half.buffered());
                        let (r, _) = echo_writer.lock().await.write_all(bytes).await;
                        r.unwrap();
                    }
                    echo_writer.lock().await.shutdown_write().await.unwrap();
                });
                let (r, _) = client.write_all(payload).await;
                r.unwrap();
                client.shutdown_write().await.unwrap();
                let mut echoed = Vec::new();
                loop {
                    let (n, returned) = client.read_append(echoed, 4096).await;
                    echoed = returned;
                    if n.unwrap() == 0 {
                        break;
                    }
                }
                echo.await;
                echoed
            }
        });
        for echoed in results {
            assert!(echoed == payload, "echo differs");
        }
    }

    #[test]
    fn shared_writer_serialises_holders() {
        let results = on_each_driver(|| async {
            let lock = std::rc::Rc::new(SharedWriter::new(Vec::<u32>::new()));
            let mut tasks = Vec::new();
            for id in 0..4u32 {
                let lock = lock.clone();
                tasks.push(monoio::spawn(async move {
                    let mut guard = lock.lock().await;
                    guard.push(id);
                    crate::sleep(Duration::from_millis(1)).await;
                    guard.push(id);
                }));
            }
            for t in tasks {
                t.await;
            }
            let guard = lock.lock().await;
            guard.clone()
        });
        for order in results {
            // Each holder's two pushes are adjacent: nobody wrote while another held the lock.
            assert_eq!(order.len(), 8);
            for pair in order.chunks(2) {
                assert_eq!(pair[0], pair[1], "{order:?}");
            }
        }
    }
}
