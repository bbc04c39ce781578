//! The index-consistency checker: compares every index of every table with the records it
//! indexes, in one read snapshot. Read-only: it never opens a write transaction and never repairs;
//! it reports what it found so a test (or an operator) can see it.
//!
//! Consistent means, for each table and each built index:
//! - every stored, non-tombstone record has one entry per index key of its attribute value (the
//!   same keys the writer derives: one per array element, null for a missing value), pointing to
//!   its primary key;
//! - no entry points to a missing record, to a tombstone, or to a record whose value no longer
//!   yields that index key.
//!
//! Records that have expired but are not yet removed still count as indexed: removing them, and
//! their index entries, is the expiry sweep's job, and until then reads re-check expiry.

use std::collections::BTreeSet;

use super::entry::Header;
use super::writer::{decode_record, index_keys};
use super::{Database, StoreError};

/// What [`Database::check_indexes`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IndexReport {
    pub tables_checked: usize,
    pub indexes_checked: usize,
    /// Stored, non-tombstone records seen (expired ones included).
    pub records_checked: u64,
    pub entries_checked: u64,
    /// One line per inconsistency; empty when every index matches its table.
    pub problems: Vec<String>,
}

impl IndexReport {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Problems listed at most; past it only the count grows, so a badly damaged file cannot make the
/// report unbounded.
const PROBLEMS_LISTED_MAX: usize = 100;

impl Database {
    /// Checks every index of every table against its records, in one read snapshot.
    pub fn check_indexes(&self) -> Result<IndexReport, StoreError> {
        let mut report = IndexReport::default();
        let mut problem_count = 0usize;
        let mut problem = |report: &mut IndexReport, line: String| {
            problem_count += 1;
            if report.problems.len() < PROBLEMS_LISTED_MAX {
                report.problems.push(line);
            }
        };
        let txn = self.env.read_txn()?;
        for name in self.table_names() {
            let Some(table) = self.table(&name) else {
                continue;
            };
            report.tables_checked += 1;
            // (attribute position, index key, primary key) the records call for.
            let mut expected: BTreeSet<(usize, Vec<u8>, Vec<u8>)> = BTreeSet::new();
            let mut keys = Vec::new();
            for item in table.records.iter(&txn)? {
                let (pk, entry) = item?;
                let (header, body) = Header::read(entry)?;
                if header.deleted {
                    continue;
                }
                report.records_checked += 1;
                let record = decode_record(body)?;
                for (position, (attribute, _)) in table.indexes.iter().enumerate() {
                    keys.clear();
                    index_keys(record.get(attribute), &mut keys);
                    for k in keys.drain(..) {
                        expected.insert((position, k, pk.to_vec()));
                    }
                }
            }
            for (position, (attribute, index)) in table.indexes.iter().enumerate() {
                report.indexes_checked += 1;
                // Every data item of the dup-sorted index, duplicates included.
                for item in index.iter(&txn)? {
                    let (k, pk) = item?;
                    report.entries_checked += 1;
                    if expected.remove(&(position, k.to_vec(), pk.to_vec())) {
                        continue;
                    }
                    let why = match table.records.get(&txn, pk)? {
                        None => "the record does not exist".to_string(),
                        Some(entry) => match Header::read(entry) {
                            Ok((h, _)) if h.deleted => "the record is a tombstone".to_string(),
                            Ok(_) => "the record no longer has this value".to_string(),
                            Err(e) => e.to_string(),
                        },
                    };
                    problem(
                        &mut report,
                        format!(
                            "{}.{name}.{attribute}: entry {} → {}: {why}",
                            self.name,
                            describe(k),
                            describe(pk)
                        ),
                    );
                }
            }
            for (position, k, pk) in expected {
                let attribute = table
                    .indexes
                    .get(position)
                    .map(|(a, _)| a.as_str())
                    .unwrap_or("?");
                problem(
                    &mut report,
                    format!(
                        "{}.{name}.{attribute}: record {} has no entry for {}",
                        self.name,
                        describe(&pk),
                        describe(&k)
                    ),
                );
            }
        }
        if problem_count > report.problems.len() {
            let more = problem_count - report.problems.len();
            report.problems.push(format!("... and {more} more"));
        }
        Ok(report)
    }
}

/// An index or primary key for a report line: decoded when it decodes, else hex.
fn describe(bytes: &[u8]) -> String {
    match crate::value::key::decode(bytes) {
        Ok(v) => format!("{v:?}"),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
