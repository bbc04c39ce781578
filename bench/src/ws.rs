//! The WebSocket side of the fan-out workload: a minimal client (handshake, unmasked server
//! frames in, masked pongs out) so the bench needs no WebSocket crate. Frames over 16 MiB end
//! the connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Largest server frame accepted.
const FRAME_BYTES_MAX: u64 = 16 << 20;

pub fn subscribe(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{authorization}\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 101") {
        bail!("WebSocket upgrade answered {line:?}");
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    Ok(reader)
}

/// Calls `each(payload)` for every text or binary frame until it returns false or the stream
/// ends; answers pings.
pub fn read(mut reader: BufReader<TcpStream>, mut each: impl FnMut(&[u8]) -> bool) {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 2];
        if reader.read_exact(&mut head).is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                if reader.read_exact(&mut b).is_err() {
                    return;
                }
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                if reader.read_exact(&mut b).is_err() {
                    return;
                }
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        if len > FRAME_BYTES_MAX {
            return;
        }
        payload.resize(len as usize, 0);
        if reader.read_exact(&mut payload).is_err() {
            return;
        }
        match opcode {
            1 | 2 if !each(&payload) => return,
            8 => return,
            9 => {
                // Pong, masked with a zero key (clients must mask; any key will do).
                let mut pong = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
                pong.extend_from_slice(&payload[..payload.len().min(125)]);
                let _ = reader.get_mut().write_all(&pong);
            }
            _ => {}
        }
    }
}
