//! What every fold adds besides the requests (docs/operations-api.md "Analytics"): the tables'
//! and databases' sizes, and the process's resource usage.

use crate::value::{Object, Value};

use super::Resources;

/// HarperDB's `table-size` per table and `database-size` per database.
pub(super) fn sizes(resources: &Resources) -> Vec<Object> {
    let mut rows = Vec::new();
    for name in resources.store.database_names() {
        let Some(db) = resources.store.database(&name) else {
            continue;
        };
        let Ok(txn) = db.read() else { continue };
        let mut used = 0u64;
        for table_name in db.table_names() {
            let Some(table) = db.table(&table_name) else {
                continue;
            };
            let size = txn.table_size(&table).unwrap_or(0);
            used += size;
            let mut o = Object::new();
            o.insert("metric", Value::from("table-size"));
            o.insert("database", Value::String(name.clone()));
            o.insert("table", Value::String(table_name));
            o.insert("size", Value::Int(size as i64));
            rows.push(o);
        }
        let total = db.file_size();
        let mut o = Object::new();
        o.insert("metric", Value::from("database-size"));
        o.insert("database", Value::String(name.clone()));
        o.insert("size", Value::Int(total as i64));
        o.insert("used", Value::Int(used as i64));
        o.insert("free", Value::Int(total.saturating_sub(used) as i64));
        o.insert("audit", Value::Int(txn.audit_size().unwrap_or(0) as i64));
        rows.push(o);
    }
    rows
}

/// The process's resource usage (`getrusage`), times in milliseconds.
#[derive(Default, Clone, Copy)]
pub(super) struct Usage {
    pub(super) user_ms: f64,
    pub(super) system_ms: f64,
    pub(super) minor_faults: f64,
    pub(super) major_faults: f64,
    pub(super) fs_read: f64,
    pub(super) fs_write: f64,
    pub(super) voluntary: f64,
    pub(super) involuntary: f64,
}

impl Usage {
    pub(super) fn now() -> Usage {
        // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Usage::default();
        }
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        Usage {
            user_ms: ms(ru.ru_utime),
            system_ms: ms(ru.ru_stime),
            minor_faults: ru.ru_minflt as f64,
            major_faults: ru.ru_majflt as f64,
            fs_read: ru.ru_inblock as f64,
            fs_write: ru.ru_oublock as f64,
            voluntary: ru.ru_nvcsw as f64,
            involuntary: ru.ru_nivcsw as f64,
        }
    }
}
