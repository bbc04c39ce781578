//! A subscription's initial state, streamed from a cursor as the subscriber reads (README
//! "Real-time": slow subscribers), never collected whole: each chunk is read in its own short
//! read transaction on the core, resuming after the last key (or audit version) read, so a
//! subscriber that stops reading holds no transaction and at most one chunk.
//!
//! Joining to the live stream without a gap or a duplicate, while records change between chunks:
//! every chunk's snapshot has a horizon H (the newest commit it sees, see [`horizon`]). A live
//! change of key k at version v
//! - for k not yet read (after the cursor): is skipped — the chunk that reads k later sees this
//!   commit (it was committed before it was dispatched), deletes included;
//! - for k read by a chunk with horizon H: is skipped if v ≤ H (that chunk saw it), else sent.
//!
//! Horizons only grow, and once the core has dispatched every commit up to a chunk's horizon no
//! later change can be at or below it: such chunks are "settled" and forgotten, so the cursor
//! keeps only the few chunks read while commits were still on their way to this core
//! ([`UNSETTLED_MAX`]). Audit replay (`startTime`) streams the same way by version: until it
//! reaches the end every live change is still ahead of it; after, changes above the end's
//! horizon are new.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::store::{Database, ReadTxn, Record, StoreError, Table};
use crate::value::ArchivedValue;

/// Records one chunk delivers at most.
pub const CHUNK_RECORDS_MAX: usize = 256;
/// Stored bytes one chunk delivers at most (at least one record, whatever its size).
pub const CHUNK_BYTES_MAX: usize = 256 << 10;
/// Records (or audit entries) one chunk's transaction looks at, matching the filter or not.
pub const CHUNK_SCAN_MAX: usize = 4096;
/// Chunks read at distinct horizons but not yet settled; at this many the next chunk waits for
/// the core's dispatch (which has those commits in its inbox).
pub const UNSETTLED_MAX: usize = 64;

/// The newest version a read transaction of `db` sees, given that every commit up to `since` was
/// dispatched on this core: later ones are found in the audit log (a handful — those committed
/// but not yet dispatched). Every commit with changes writes an audit entry at its version.
pub fn horizon(txn: &ReadTxn<'_>, since: f64) -> Result<f64, StoreError> {
    let mut horizon = since;
    for item in txn.audit_range(Bound::Excluded(since), Bound::Unbounded)? {
        horizon = horizon.max(item?.0);
    }
    Ok(horizon)
}

/// What one call to read a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Read this many records (possibly 0: none in the range matched); more may follow.
    Read(usize),
    /// Nothing left: the whole state was read.
    Done,
    /// The core's dispatch lags this cursor's chunks; try again after it catches up.
    Blocked,
}

/// Keys up to where the cursor has settled.
#[derive(Debug, Clone, PartialEq)]
enum Upto {
    Nothing,
    Key(Vec<u8>),
    All,
}

impl Upto {
    fn includes(&self, key: &[u8]) -> bool {
        match self {
            Upto::Nothing => false,
            Upto::Key(last) => key <= last.as_slice(),
            Upto::All => true,
        }
    }
}

/// A cursor over a table's live records in key order, read a chunk at a time.
pub struct StateCursor {
    db: Arc<Database>,
    table: Arc<Table>,
    /// The last key read (encoded); `None` before the first chunk.
    after: Option<Vec<u8>>,
    /// Reads only this key (a single-record subscription), not the whole table.
    only: Option<Vec<u8>>,
    done: bool,
    settled: Upto,
    /// Chunks read but not settled, oldest first: (last key, `None` = to the end; horizon).
    unsettled: VecDeque<(Option<Vec<u8>>, f64)>,
}

impl StateCursor {
    pub fn new(db: Arc<Database>, table: Arc<Table>) -> StateCursor {
        StateCursor {
            db,
            table,
            after: None,
            only: None,
            done: false,
            settled: Upto::Nothing,
            unsettled: VecDeque::new(),
        }
    }

    /// A cursor over the one record `key` names (none if it cannot be a key).
    pub fn record(db: Arc<Database>, table: Arc<Table>, key: &crate::value::Value) -> StateCursor {
        let mut cursor = StateCursor::new(db, table);
        let mut encoded = Vec::with_capacity(32);
        if crate::value::key::encode(key, &mut encoded).is_ok() {
            cursor.only = Some(encoded);
        } else {
            cursor.done = true;
            cursor.settled = Upto::All;
        }
        cursor
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Every record was read (some may still wait in the subscriber's queue).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The core's dispatch lags too many chunks for another to be read now.
    pub fn is_blocked(&self) -> bool {
        self.unsettled.len() >= UNSETTLED_MAX
    }

    /// Done, and every chunk settled: live changes need no check any more.
    pub fn is_settled(&self) -> bool {
        self.settled == Upto::All
    }

    /// Forgets chunks whose horizon the core has dispatched past (`dispatched`: every commit of
    /// this database up to it was dispatched on this core).
    pub fn settle(&mut self, dispatched: f64) {
        while let Some((_, h)) = self.unsettled.front() {
            if *h > dispatched {
                break;
            }
            if let Some((last, _)) = self.unsettled.pop_front() {
                self.settled = match last {
                    Some(k) => Upto::Key(k),
                    None => Upto::All,
                };
            }
        }
    }

    /// Whether a live change of `key` (encoded) at `version` is in the state already, or will be:
    /// true → the live event must be skipped.
    pub fn covers(&self, key: &[u8], version: f64) -> bool {
        let read = self.done || self.after.as_deref().is_some_and(|a| key <= a);
        if !read {
            return true;
        }
        if self.settled.includes(key) {
            return false;
        }
        self.unsettled
            .iter()
            .find(|(last, _)| last.as_deref().is_none_or(|l| key <= l))
            .is_some_and(|(_, h)| version <= *h)
    }

    /// Reads the next chunk in a new read transaction: `each` gets every live record after the
    /// cursor (encoded key, record) and returns the bytes it took, or `None` when the record
    /// does not match; at most `records_max` are taken. `since`: see [`horizon`].
    pub fn read_chunk(
        &mut self,
        since: f64,
        records_max: usize,
        mut each: impl FnMut(&[u8], Record<'_>) -> Result<Option<usize>, StoreError>,
    ) -> Result<Chunk, StoreError> {
        if self.done {
            return Ok(Chunk::Done);
        }
        self.settle(since);
        if self.is_blocked() {
            return Ok(Chunk::Blocked);
        }
        if records_max == 0 {
            return Ok(Chunk::Read(0));
        }
        let txn = self.db.read()?;
        let horizon = horizon(&txn, since)?;
        let (mut taken, mut bytes, mut looked) = (0usize, 0usize, 0usize);
        let mut last: Option<&[u8]> = None;
        let mut end = true;
        if let Some(only) = &self.only {
            if let Some(record) = txn.get_encoded(&self.table, only)? {
                taken += usize::from(each(only, record)?.is_some());
            }
        }
        let rest = match self.only {
            Some(_) => None,
            None => Some(txn.scan_after(&self.table, self.after.as_deref())?),
        };
        for item in rest.into_iter().flatten() {
            if taken >= records_max || bytes >= CHUNK_BYTES_MAX || looked >= CHUNK_SCAN_MAX {
                end = false;
                break;
            }
            let (key, record) = item?;
            looked += 1;
            last = Some(key);
            if let Some(b) = each(key, record)? {
                taken += 1;
                bytes += b;
            }
        }
        let last = last.map(<[u8]>::to_vec);
        drop(txn);
        // Chunks read at the same horizon join into one, exactly (the same versions are in
        // each): without commits the list stays one long, even when the newest audit entry is
        // one no commit was published for (a delete of an absent record).
        let upper = if end { None } else { last.clone() };
        self.done |= end;
        match self.unsettled.back_mut() {
            Some((back, h)) if *h == horizon => *back = upper,
            _ => self.unsettled.push_back((upper, horizon)),
        }
        if last.is_some() {
            self.after = last;
        }
        Ok(Chunk::Read(taken))
    }
}

/// A cursor over the audit log by version (`startTime` replay), read a chunk at a time; it may
/// stop inside an entry (a bulk write's entry holds up to 100,000 changes) and resume there.
pub struct AuditCursor {
    db: Arc<Database>,
    /// The last version read (or the start, exclusive).
    after: f64,
    /// Changes of the entry at `after` already read when it was left part-way (0: all of it).
    partial: usize,
    /// Once the end was reached: the horizon of that snapshot.
    end: Option<f64>,
}

/// What an audit chunk's reader did with one entry: events taken, and where to resume inside
/// it when it stopped part-way.
pub type EntryRead = (usize, Option<usize>);

impl AuditCursor {
    /// Replays entries with versions above `after`.
    pub fn new(db: Arc<Database>, after: f64) -> AuditCursor {
        AuditCursor {
            db,
            after,
            partial: 0,
            end: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// Replayed to the end, and every commit up to that end dispatched (`dispatched`): no live
    /// change needs a check any more.
    pub fn is_settled(&self, dispatched: f64) -> bool {
        self.end.is_some_and(|end| end <= dispatched)
    }

    /// Whether a live change at `version` was or will be replayed (true → skip it): every
    /// dispatched commit is in the audit log, so until the end is reached each is still ahead.
    pub fn covers(&self, version: f64) -> bool {
        self.end.is_none_or(|end| version <= end)
    }

    /// Reads audit entries after the cursor in a new read transaction until `events_max` events
    /// were taken: `each` gets (version, entry, changes of it to skip, events it may take).
    pub fn read_chunk(
        &mut self,
        since: f64,
        events_max: usize,
        mut each: impl FnMut(f64, &ArchivedValue, usize, usize) -> Result<EntryRead, StoreError>,
    ) -> Result<Chunk, StoreError> {
        if self.end.is_some() {
            return Ok(Chunk::Done);
        }
        let events_max = events_max.max(1);
        let txn = self.db.read()?;
        let horizon = horizon(&txn, since)?;
        let (mut taken, mut looked) = (0usize, 0usize);
        let mut end = true;
        let from = match self.partial {
            0 => Bound::Excluded(self.after),
            _ => Bound::Included(self.after),
        };
        for item in txn.audit_range(from, Bound::Unbounded)? {
            if taken >= events_max || looked >= CHUNK_SCAN_MAX {
                end = false;
                break;
            }
            let (version, entry) = item?;
            looked += 1;
            let skip = if version == self.after {
                self.partial
            } else {
                0
            };
            let (took, resume) = each(version, entry, skip, events_max - taken)?;
            taken += took;
            self.after = version;
            self.partial = resume.unwrap_or(0);
            if resume.is_some() {
                end = false;
                break;
            }
        }
        if end {
            self.end = Some(horizon.max(self.after));
        }
        Ok(Chunk::Read(taken))
    }
}
