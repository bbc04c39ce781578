//! Keeping a database file written ahead of its data, so a commit's sync does not allocate.
//!
//! With `storage.sync` every commit group ends in an `fdatasync`. When the group's new pages
//! lie past the end of the file (every insert grows it), that sync must also allocate the
//! blocks and commit the filesystem's journal for them; on ext4 that roughly doubles its time
//! (measured here: 20 new pages per sync, 364 µs into fresh space against 186 µs into space
//! written before). So the writer keeps the file's tail written with zeros a few MiB beyond the
//! last page LMDB uses, one step at a time between commits — when it is idle, or when the tail
//! is about to run out — and starts the zeros' writeback at once so a later sync rarely waits
//! for it (docs/design.md "Writing the file ahead").
//!
//! Why the zeros can never overwrite data: a step runs on the writer thread between commits,
//! inside an LMDB write transaction it then aborts (so no other writer, in this process or
//! another, can be writing), and writes only at or past both the file's current end and the end
//! of LMDB's last used page. LMDB never reads a page past its last used one, and a page it
//! later allocates there is written by its own commit before the meta page that refers to it.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::os::unix::io::AsRawFd as _;

use heed::{Env, WithoutTls};

/// How far ahead of LMDB's last used page the file is kept written.
pub(super) const AHEAD_BYTES: u64 = 4 << 20;
/// Bytes written per step: one step at a time bounds what it adds to a commit under load.
pub(super) const STEP_BYTES: u64 = 1 << 20;
/// Zeros written per system call.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// When a step is wanted: the writer asks between commits only when the written tail is about
/// to run out (the step then delays the group it committed), and whenever it is idle for the
/// whole lead.
#[derive(Clone, Copy)]
pub(super) enum Need {
    /// Less than [`AHEAD_BYTES`] past LMDB's last used page.
    Ahead,
    /// Less than [`STEP_BYTES`] past it.
    Soon,
}

/// The writer's view of the file's written tail.
pub(super) struct GrowAhead {
    /// `None` when off (`storage.sync` off, or the file could not be opened or written).
    file: Option<File>,
    /// The file's end as of the last step: everything before it has been written.
    written_end: u64,
}

impl GrowAhead {
    /// Off without `storage.sync`: no commit waits for a sync there, so nothing is gained.
    pub(super) fn new(env: &Env<WithoutTls>, sync: bool) -> GrowAhead {
        let off = GrowAhead {
            file: None,
            written_end: 0,
        };
        if !sync {
            return off;
        }
        let path = env.path();
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => {
                let written_end = file.metadata().map(|m| m.len()).unwrap_or(0);
                GrowAhead {
                    file: Some(file),
                    written_end,
                }
            }
            Err(e) => {
                tracing::warn!("not writing {} ahead: {e}", path.display());
                off
            }
        }
    }

    /// Writes one step of zeros past the file's end when less than `need` asks for is left past
    /// LMDB's last used page. Called between commits; a failure turns this off (the commits do
    /// not depend on it).
    pub(super) fn step(&mut self, env: &Env<WithoutTls>, need: Need) {
        if self.file.is_none() {
            return;
        }
        let lead = match need {
            Need::Ahead => AHEAD_BYTES,
            Need::Soon => STEP_BYTES,
        };
        // Nothing past the map: LMDB never uses it (`storage.mapSize`).
        let map_end = env.info().map_size as u64;
        if self.written_end >= super::used_bytes(env).saturating_add(lead).min(map_end) {
            return;
        }
        if let Err(e) = self.write_step(env, map_end) {
            tracing::warn!("stopped writing {} ahead: {e}", env.path().display());
            self.file = None;
        }
    }

    fn write_step(&mut self, env: &Env<WithoutTls>, map_end: u64) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        // LMDB's writer lock for the length of the step: nothing else writes the file meanwhile.
        let txn = env.write_txn().map_err(std::io::Error::other)?;
        let start = file.metadata()?.len().max(super::used_bytes(env));
        let end = (start + STEP_BYTES).min(map_end);
        if end <= start {
            return Ok(());
        }
        let mut at = start;
        while at < end {
            let n = ZEROS.len().min((end - at) as usize);
            file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        drop(txn);
        // SAFETY: sync_file_range(2) on a file descriptor `file` owns, over a range just
        // written; it touches no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                start as libc::off64_t,
                (end - start) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            // Only a hint for the next sync's sake; the zeros are written either way.
            tracing::debug!(
                "sync_file_range on {}: {}",
                env.path().display(),
                std::io::Error::last_os_error()
            );
        }
        self.written_end = at;
        Ok(())
    }
}
