//! [`AnyStream`]: a server connection that is either plain TCP or TLS over TCP, as one type.
//!
//! A protocol that takes a connection over from HTTP (WebSocket, Server-Sent Events, MQTT over
//! WebSocket) is handed the stream through a boxed, non-generic callback, so it cannot be
//! generic over the transport; this enum is what it gets instead. It offers the same
//! [`Transport`] and [`Split`] as its variants and adds nothing else.

use std::io;

use crate::{
    ReadBytes, Split, Stream, TcpRead, TcpWrite, TlsRead, TlsStream, TlsWrite, Transport,
    WriteBytes,
};

pub enum AnyStream {
    Plain(Stream),
    Tls(Box<TlsStream<Stream>>),
}

impl From<Stream> for AnyStream {
    fn from(stream: Stream) -> Self {
        AnyStream::Plain(stream)
    }
}

impl From<TlsStream<Stream>> for AnyStream {
    fn from(stream: TlsStream<Stream>) -> Self {
        AnyStream::Tls(Box::new(stream))
    }
}

// Inherent methods, so code holding an `AnyStream` needs no trait import (like `Stream`).
impl AnyStream {
    pub async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self {
            AnyStream::Plain(s) => s.read_append(buf, min_spare).await,
            AnyStream::Tls(s) => Transport::read_append(&mut **s, buf, min_spare).await,
        }
    }

    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            AnyStream::Plain(s) => s.write_all(buf).await,
            AnyStream::Tls(s) => Transport::write_all(&mut **s, buf).await,
        }
    }

    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            AnyStream::Plain(s) => s.shutdown_write().await,
            AnyStream::Tls(s) => Transport::shutdown_write(&mut **s).await,
        }
    }
}

impl Transport for AnyStream {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        AnyStream::read_append(self, buf, min_spare).await
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        AnyStream::write_all(self, buf).await
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        AnyStream::shutdown_write(self).await
    }

    async fn readable(&self) -> io::Result<bool> {
        match self {
            AnyStream::Plain(s) => s.readable().await.map(|()| true),
            AnyStream::Tls(s) => Transport::readable(&**s).await,
        }
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            AnyStream::Plain(s) => s.set_nodelay(nodelay),
            AnyStream::Tls(s) => s.set_nodelay(nodelay),
        }
    }

    fn peer_cn(&self) -> Option<&str> {
        match self {
            AnyStream::Plain(_) => None,
            AnyStream::Tls(s) => s.peer_cn(),
        }
    }
}

/// The reading direction of a split [`AnyStream`].
pub enum AnyRead {
    Plain(TcpRead),
    Tls(TlsRead<TcpRead, TcpWrite>),
}

/// The writing direction of a split [`AnyStream`].
pub enum AnyWrite {
    Plain(TcpWrite),
    Tls(TlsWrite<TcpWrite>),
}

impl Split for AnyStream {
    type Read = AnyRead;
    type Write = AnyWrite;

    fn into_split(self) -> (AnyRead, AnyWrite) {
        match self {
            AnyStream::Plain(s) => {
                let (r, w) = s.into_split();
                (AnyRead::Plain(r), AnyWrite::Plain(w))
            }
            AnyStream::Tls(s) => {
                let (r, w) = s.into_split();
                (AnyRead::Tls(r), AnyWrite::Tls(w))
            }
        }
    }
}

impl ReadBytes for AnyRead {
    async fn read_append(
        &mut self,
        buf: Vec<u8>,
        min_spare: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self {
            AnyRead::Plain(r) => r.read_append(buf, min_spare).await,
            AnyRead::Tls(r) => r.read_append(buf, min_spare).await,
        }
    }

    fn has_readiness(&self) -> bool {
        match self {
            AnyRead::Plain(r) => r.has_readiness(),
            AnyRead::Tls(r) => r.has_readiness(),
        }
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            AnyRead::Plain(r) => r.readable().await,
            AnyRead::Tls(r) => r.readable().await,
        }
    }
}

impl WriteBytes for AnyWrite {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            AnyWrite::Plain(w) => w.write_all(buf).await,
            AnyWrite::Tls(w) => w.write_all(buf).await,
        }
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            AnyWrite::Plain(w) => w.shutdown_write().await,
            AnyWrite::Tls(w) => w.shutdown_write().await,
        }
    }
}
