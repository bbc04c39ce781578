//! Reads on the calling core: a short LMDB read transaction (no thread-local slot, so a core may
//! hold several), records served from the map as archived values without copying.
//!
//! Opening an LMDB read transaction costs a zeroed allocation sized by the environment's named
//! databases (1,024 × 49 bytes, about 50 KB) and a turn on the reader table's lock, which every
//! core shares. A core that opted in ([`cache_reads_on_this_thread`]) keeps its last read
//! transaction per database and reuses it while it is still the newest snapshot (its id is the
//! environment's last committed transaction), so a run of reads between two commits opens one.
//! The core lets its cached transactions go every heartbeat ([`release_cached_reads`]): an old
//! snapshot held open keeps LMDB from reusing pages, and dropping a database waits for every
//! handle on its environment.

use std::cell::{Cell, RefCell};
use std::ops::Bound;
use std::rc::Rc;

use heed::{RoTxn, WithoutTls};

use super::entry::Header;
use super::layout;
use super::writer::encode_primary_key;
use super::{Database, StoreError, Table};
use crate::value::{self, ArchivedValue, Value};

/// Key/value pairs straight from LMDB, in either direction.
type RawIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

pub struct ReadTxn<'e> {
    pub(super) db: &'e Database,
    pub(super) txn: Rc<RoTxn<'static, WithoutTls>>,
    /// The wall clock when the first record with an expiry time was judged by this
    /// transaction: read only when needed (most records never expire), then fixed for the
    /// transaction so a scan judges every record at one instant.
    now_ms: Cell<Option<f64>>,
}

/// A core's cached read transaction of one database.
struct Cached {
    /// The database's [`Database::serial`].
    db: u64,
    txn: Rc<RoTxn<'static, WithoutTls>>,
}

/// Capacity the key buffer keeps: a stored key is at most `KEY_BYTES_MAX` (250) bytes.
const KEY_SCRATCH_BYTES_MAX: usize = 1024;

thread_local! {
    /// [`ReadTxn::get`]'s encoded key, at most [`KEY_SCRATCH_BYTES_MAX`] between reads.
    static KEY_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// Whether this thread caches read transactions (executor cores do; other threads, such as
    /// jobs and admin work, which no heartbeat visits, do not).
    static CACHING: Cell<bool> = const { Cell::new(false) };
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// Lets this thread reuse read transactions (see the module's comment); it must then call
/// [`release_cached_reads`] regularly.
pub fn cache_reads_on_this_thread() {
    CACHING.with(|c| c.set(true));
}

/// Drops this thread's cached read transactions.
pub fn release_cached_reads() {
    let released = CACHE.with(|cache| std::mem::take(&mut *cache.borrow_mut()));
    drop(released);
}

fn open_txn(db: &Database) -> Result<Rc<RoTxn<'static, WithoutTls>>, StoreError> {
    if !CACHING.with(Cell::get) {
        return Ok(Rc::new(db.env.clone().static_read_txn()?));
    }
    let serial = db.serial;
    let newest = db.env.info().last_txn_id;
    let cached = CACHE.with(|cache| {
        cache
            .borrow()
            .iter()
            .find(|c| c.db == serial && c.txn.id() == newest)
            .map(|c| c.txn.clone())
    });
    if let Some(txn) = cached {
        return Ok(txn);
    }
    let txn = Rc::new(db.env.clone().static_read_txn()?);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        cache.retain(|c| c.db != serial);
        cache.push(Cached {
            db: serial,
            txn: txn.clone(),
        });
    });
    Ok(txn)
}

/// A live record as stored: its header and the archived value in the memory map.
pub struct Record<'t> {
    pub header: Header,
    pub value: &'t ArchivedValue,
    /// Bytes of the archived value in the map.
    pub size: usize,
}

impl<'e> ReadTxn<'e> {
    fn now_ms(&self) -> f64 {
        match self.now_ms.get() {
            Some(now) => now,
            None => {
                let now = super::now_ms();
                self.now_ms.set(Some(now));
                now
            }
        }
    }

    pub(super) fn new(db: &'e Database) -> Result<Self, StoreError> {
        Ok(ReadTxn {
            db,
            txn: open_txn(db)?,
            now_ms: Cell::new(None),
        })
    }

    fn decode<'t>(&'t self, entry: &'t [u8]) -> Result<Option<Record<'t>>, StoreError> {
        let (header, body) = Header::read(entry)?;
        if !header.is_live_with(|| self.now_ms()) {
            return Ok(None);
        }
        let value = value::access(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(Record {
            header,
            value,
            size: body.len(),
        }))
    }

    /// The live record with this key; `None` for absent, deleted and expired ones, and for keys
    /// that cannot be keys (they cannot be stored either).
    pub fn get<'t>(&'t self, table: &Table, key: &Value) -> Result<Option<Record<'t>>, StoreError> {
        // The thread's key buffer, not an allocation per read; a fresh one if it is in use.
        KEY_SCRATCH.with(|scratch| {
            let mut fresh = Vec::new();
            let mut held = scratch.try_borrow_mut();
            let encoded = match held.as_deref_mut() {
                Ok(buffer) => buffer,
                Err(_) => &mut fresh,
            };
            encoded.clear();
            let found = match encode_primary_key(key, encoded) {
                Ok(()) => self.get_encoded(table, encoded),
                Err(_) => Ok(None),
            };
            // A refused key longer than any stored one may have grown it; it is not kept.
            if encoded.capacity() > KEY_SCRATCH_BYTES_MAX {
                *encoded = Vec::new();
            }
            found
        })
    }

    pub fn get_encoded<'t>(
        &'t self,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<Record<'t>>, StoreError> {
        match table.records.get(&self.txn, key)? {
            Some(entry) => self.decode(entry),
            None => Ok(None),
        }
    }

    /// Every live record in key order (`descending` reverses it).
    pub fn scan<'t>(&'t self, table: &Table, descending: bool) -> Result<Scan<'t>, StoreError> {
        let iter: RawIter<'t> = if descending {
            Box::new(table.records.rev_iter(&self.txn)?)
        } else {
            Box::new(table.records.iter(&self.txn)?)
        };
        Ok(Scan { txn: self, iter })
    }

    /// Live records with keys after `after` (every one when `None`), in key order: where a
    /// streamed read resumes in a new transaction (`pubsub`'s initial state).
    pub fn scan_after<'t>(
        &'t self,
        table: &Table,
        after: Option<&[u8]>,
    ) -> Result<Scan<'t>, StoreError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = (lower, Bound::<&[u8]>::Unbounded);
        let iter: RawIter<'t> = Box::new(table.records.range(&self.txn, &range)?);
        Ok(Scan { txn: self, iter })
    }

    /// Primary keys whose index entry for `attribute` lies in the range, in index order.
    pub fn index_range<'t>(
        &'t self,
        table: &Table,
        attribute: &str,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        descending: bool,
    ) -> Result<IndexCursor<'t>, StoreError> {
        let index = table
            .index(attribute)
            .ok_or_else(|| StoreError::Io(format!("{attribute} is not indexed")))?;
        let range = (lower, upper);
        let iter: RawIter<'t> = if descending {
            Box::new(index.rev_range(&self.txn, &range)?)
        } else {
            Box::new(index.range(&self.txn, &range)?)
        };
        Ok(IndexCursor { iter })
    }

    /// Live records counted at their last write (`describe_table`'s `record_count`).
    pub fn count(&self, table: &Table) -> Result<u64, StoreError> {
        let key = layout::meta_key("count", &table.name);
        Ok(self
            .db
            .meta
            .get(&self.txn, &key)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| i64::from_le_bytes(b).max(0) as u64)
            .unwrap_or(0))
    }

    /// The version of the table's last committed write (`last_updated_record`), if any.
    pub fn last_updated(&self, table: &Table) -> Result<Option<f64>, StoreError> {
        let key = layout::meta_key("updated", &table.name);
        Ok(self
            .db
            .meta
            .get(&self.txn, &key)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(f64::from_le_bytes))
    }

    /// Bytes of pages the table's records and indexes occupy (`table_size`).
    pub fn table_size(&self, table: &Table) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for db in std::iter::once(&table.records).chain(table.indexes.iter().map(|(_, d)| d)) {
            let stat = db.stat(&self.txn)?;
            let pages = stat.branch_pages + stat.leaf_pages + stat.overflow_pages;
            total += pages as u64 * u64::from(stat.page_size);
        }
        Ok(total)
    }

    /// Bytes of pages the audit log occupies (`db_audit_size`).
    pub fn audit_size(&self) -> Result<u64, StoreError> {
        let stat = self.db.audit.stat(&self.txn)?;
        let pages = stat.branch_pages + stat.leaf_pages + stat.overflow_pages;
        Ok(pages as u64 * u64::from(stat.page_size))
    }

    /// Audit entries with versions in the range, oldest first: (version, archived entry).
    pub fn audit_range<'t>(
        &'t self,
        from: Bound<f64>,
        to: Bound<f64>,
    ) -> Result<impl Iterator<Item = Result<(f64, &'t ArchivedValue), StoreError>> + 't, StoreError>
    {
        let map = |b: Bound<f64>| match b {
            Bound::Included(v) => Bound::Included(layout::audit_key(v)),
            Bound::Excluded(v) => Bound::Excluded(layout::audit_key(v)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (from, to) = (map(from), map(to));
        let range = (from.as_ref().map(|k| &k[..]), to.as_ref().map(|k| &k[..]));
        let iter = self.db.audit.range(&self.txn, &range)?;
        Ok(iter.map(|item| {
            let (k, v) = item?;
            let version = layout::version_from_audit_key(k)
                .ok_or_else(|| StoreError::Corrupt("audit key".into()))?;
            let value = value::access(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((version, value))
        }))
    }
}

/// Live records in key order: (encoded key, record).
pub struct Scan<'t> {
    txn: &'t ReadTxn<'t>,
    iter: RawIter<'t>,
}

impl<'t> Iterator for Scan<'t> {
    type Item = Result<(&'t [u8], Record<'t>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (key, entry) = match self.iter.next()? {
                Ok(pair) => pair,
                Err(e) => return Some(Err(e.into())),
            };
            match self.txn.decode(entry) {
                Ok(Some(record)) => return Some(Ok((key, record))),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// (index key, primary key) pairs in index order.
pub struct IndexCursor<'t> {
    iter: RawIter<'t>,
}

impl<'t> Iterator for IndexCursor<'t> {
    type Item = Result<(&'t [u8], &'t [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next().map(|r| r.map_err(Into::into))
    }
}
