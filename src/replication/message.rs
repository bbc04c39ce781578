//! Replication messages (docs/replication.md): each binary frame is one MessagePack `[type, body]`. This
//! file turns frames into typed pieces and back; it knows nothing of links or the store's
//! insides beyond the replicated transaction types.

use crate::store::{EntryKind, ReplicatedEntry, ReplicatedTxn, SnapshotRecord};
use crate::value::{msgpack, DecodeLimits, Object, Value};

pub const PROTOCOL: i64 = 1;

/// Decodes a frame into its type and body. Unknown shapes are errors; unknown types are not
/// (the caller ignores them).
pub fn decode(frame: &[u8], limits: &DecodeLimits) -> Result<(String, Value), String> {
    let v = msgpack::parse_with(frame, limits).map_err(|e| format!("{e:?}"))?;
    let Value::Array(mut parts) = v else {
        return Err("a message is [type, body]".into());
    };
    if parts.len() != 2 {
        return Err("a message is [type, body]".into());
    }
    let body = parts.pop().unwrap_or(Value::Null);
    match parts.pop() {
        Some(Value::String(t)) => Ok((t, body)),
        _ => Err("message type is not a string".into()),
    }
}

pub fn encode(kind: &str, body: Value) -> Vec<u8> {
    msgpack::to_vec(&Value::Array(vec![Value::String(kind.into()), body]))
}

pub fn object(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(Object::from_entries(
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    ))
}

pub fn as_f64(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

pub fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        Value::Float(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

pub fn cursors_value(cursors: &[(String, u64)]) -> Value {
    Value::Object(Object::from_entries(
        cursors
            .iter()
            .map(|(k, v)| (k.clone(), Value::Int(*v as i64)))
            .collect(),
    ))
}

pub fn cursors_from(v: Option<&Value>) -> Vec<(String, u64)> {
    match v {
        Some(Value::Object(o)) => o
            .iter()
            .filter_map(|(k, v)| as_u64(Some(v)).map(|n| (k.to_string(), n)))
            .collect(),
        _ => Vec::new(),
    }
}

pub fn strings_from(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `TXN` body: `{database, origin, seq, time, user?, entries: [[table, id, type, version,
/// value|null, expiresAt?]]}`.
pub fn txn_body(database: &str, t: &ReplicatedTxn) -> Value {
    let entries = t
        .entries
        .iter()
        .map(|e| {
            let mut row = vec![
                Value::String(e.table.clone()),
                e.key.clone(),
                Value::String(e.kind.name().into()),
                Value::Float(e.version),
                e.value.clone().unwrap_or(Value::Null),
            ];
            if let Some(x) = e.expires_at {
                row.push(Value::Float(x));
            }
            Value::Array(row)
        })
        .collect();
    object(vec![
        ("database", Value::String(database.into())),
        ("origin", Value::String(t.origin.clone())),
        ("seq", Value::Int(t.seq as i64)),
        ("time", Value::Float(t.time)),
        (
            "user",
            t.user.clone().map(Value::String).unwrap_or(Value::Null),
        ),
        ("entries", Value::Array(entries)),
    ])
}

pub fn txn_from(body: &Value) -> Option<ReplicatedTxn> {
    let origin = body.get("origin")?.as_str()?.to_string();
    let seq = as_u64(body.get("seq"))?;
    let time = as_f64(body.get("time"))?;
    let user = body.get("user").and_then(Value::as_str).map(str::to_string);
    let Value::Array(rows) = body.get("entries")? else {
        return None;
    };
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let Value::Array(p) = row else { return None };
        let table = p.first()?.as_str()?.to_string();
        let key = p.get(1)?.clone();
        let kind = EntryKind::parse(p.get(2)?.as_str()?)?;
        let version = as_f64(p.get(3))?;
        let value = p.get(4).filter(|v| !matches!(v, Value::Null)).cloned();
        entries.push(ReplicatedEntry {
            table,
            key,
            kind,
            version,
            value,
            expires_at: as_f64(p.get(5)),
        });
    }
    Some(ReplicatedTxn {
        origin,
        seq,
        time,
        user,
        entries,
    })
}

/// `SNAPSHOT` rows: `[id, version, origin, value|null, expiresAt?]`.
pub fn snapshot_row(r: &SnapshotRecord) -> Value {
    let mut row = vec![
        r.key.clone(),
        Value::Float(r.version),
        Value::String(r.origin.clone()),
        r.value.clone().unwrap_or(Value::Null),
    ];
    if let Some(x) = r.expires_at {
        row.push(Value::Float(x));
    }
    Value::Array(row)
}

pub fn snapshot_from(body: &Value) -> Option<Vec<SnapshotRecord>> {
    let table = body.get("table")?.as_str()?.to_string();
    let Value::Array(rows) = body.get("records")? else {
        return None;
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Value::Array(p) = row else { return None };
        out.push(SnapshotRecord {
            table: table.clone(),
            key: p.first()?.clone(),
            version: as_f64(p.get(1))?,
            origin: p.get(2)?.as_str()?.to_string(),
            value: p.get(3).filter(|v| !matches!(v, Value::Null)).cloned(),
            expires_at: as_f64(p.get(4)),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(t: ReplicatedTxn) {
        let frame = encode("TXN", txn_body("data", &t));
        let (kind, body) = decode(&frame, &DecodeLimits::default()).unwrap();
        assert_eq!(kind, "TXN");
        assert_eq!(body.get("database").and_then(Value::as_str), Some("data"));
        assert_eq!(txn_from(&body), Some(t));
    }

    #[test]
    fn txn_round_trips() {
        check(ReplicatedTxn {
            origin: "a".into(),
            seq: 3,
            time: 1718000000123.25,
            user: Some("admin".into()),
            entries: vec![
                ReplicatedEntry {
                    table: "Dog".into(),
                    key: Value::Int(1),
                    kind: EntryKind::Put,
                    version: 1718000000123.25,
                    value: Some(object(vec![("name", Value::String("x".into()))])),
                    expires_at: Some(1718000001000.5),
                },
                ReplicatedEntry {
                    table: "Dog".into(),
                    key: Value::String("k".into()),
                    kind: EntryKind::Delete,
                    version: 1718000000123.25,
                    value: None,
                    expires_at: None,
                },
            ],
        });
        assert!(decode(b"\x91\xa3TXN", &DecodeLimits::default()).is_err());
        assert!(decode(b"\xc1", &DecodeLimits::default()).is_err());
    }
}
