//! The root folder lock: one process per root. A second `tidepool run` on the same root would
//! share its LMDB files and (with SO_REUSEPORT) silently split its traffic.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held for the life of the process; the kernel releases it when the process dies, even by SIGKILL.
pub struct RootLock {
    file: File,
}

impl RootLock {
    pub fn acquire(root: &Path) -> Result<RootLock, String> {
        let path = root.join(".tidepool.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
        // SAFETY: flock on a valid descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.lines().next().unwrap_or("").trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(format!(
                "another tidepool process{who} is already running on root {}; stop it or use another --root",
                root.display()
            ));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(RootLock { file })
    }

    /// Adds the plain Operations API address to the lock file once it is bound (port 0 resolved),
    /// for `tidepool <operation>` (docs/cli.md). Best effort: the CLI falls back to the config.
    pub fn record_operations_api(&self, addr: std::net::SocketAddr) {
        let mut file = &self.file;
        let _ = write!(file, "\noperations {addr}");
        let _ = file.flush();
    }
}

/// The process holding `root`'s lock (`tidepool status` / `stop`): its pid as written in the lock
/// file, or None when no process holds it (never started, stopped, or died).
pub fn holder(root: &Path) -> Option<u32> {
    let path = root.join(".tidepool.lock");
    let mut file = File::open(&path).ok()?;
    // SAFETY: flock on a valid descriptor we own; no memory is involved.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above; releases the shared lock just taken.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The Operations API address the running server recorded in `root`'s lock file, if it runs.
pub fn operations_api(root: &Path) -> Option<std::net::SocketAddr> {
    holder(root)?;
    let text = std::fs::read_to_string(root.join(".tidepool.lock")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("operations "))?
        .trim()
        .parse()
        .ok()
}
