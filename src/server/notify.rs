//! systemd's notify protocol: one datagram to `$NOTIFY_SOCKET` (`READY=1`, `STOPPING=1`).

use std::os::unix::net::UnixDatagram;

pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("NOTIFY_SOCKET: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket namespace.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}
