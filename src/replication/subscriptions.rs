//! Explicit per-table subscriptions with a node (docs/replication.md "Explicit subscriptions"):
//! HarperDB 4.x's `subscriptions: [{database | schema, table, publish, subscribe}]` on
//! `add_node`, `update_node` and `configure_cluster`. `publish`: this node sends that table's
//! changes to the node; `subscribe`: it takes the node's. A node without subscriptions
//! replicates everything, as before.

use super::{message, now, Adopted, PeerSubs, Replication};
use crate::value::{Object, Value};

/// One table's entry, keeping the name key it was given with (`schema` or `database`), as
/// HarperDB shows it back.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSub {
    pub database: String,
    pub table: String,
    pub publish: bool,
    pub subscribe: bool,
    /// The entry named its database with `schema` (HarperDB's older word).
    pub schema_key: bool,
}

/// The explicit subscriptions with one node, from this node's side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subscriptions(pub Vec<TableSub>);

impl Subscriptions {
    /// `subscriptions` of a request or a stored record: None when absent or null (replicate
    /// everything); an error names what is wrong.
    pub fn parse(v: Option<&Value>) -> Result<Option<Subscriptions>, String> {
        let items = match v {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => return Err("'subscriptions' must be an array".into()),
        };
        let mut subs = Subscriptions::default();
        for item in items {
            let Value::Object(o) = item else {
                return Err("each subscription must be an object".into());
            };
            let (database, schema_key) = match (o.get("database"), o.get("schema")) {
                (Some(Value::String(d)), _) => (d.clone(), false),
                (None, Some(Value::String(s))) => (s.clone(), true),
                _ => return Err("each subscription needs a 'database' (or 'schema') name".into()),
            };
            let Some(Value::String(table)) = o.get("table") else {
                return Err("each subscription needs a 'table' name".into());
            };
            let flag = |k: &str| match o.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(format!("subscription '{k}' must be a boolean")),
            };
            subs.set(TableSub {
                database,
                table: table.clone(),
                publish: flag("publish")?,
                subscribe: flag("subscribe")?,
                schema_key,
            });
        }
        Ok(Some(subs))
    }

    /// Adds an entry or changes the one for the same table (HarperDB merges updates so).
    fn set(&mut self, sub: TableSub) {
        match self
            .0
            .iter_mut()
            .find(|s| s.database == sub.database && s.table == sub.table)
        {
            Some(existing) => {
                existing.publish = sub.publish;
                existing.subscribe = sub.subscribe;
            }
            None => self.0.push(sub),
        }
    }

    /// `self` with `update`'s entries applied over it: the tables `update` names change, the
    /// others stay (HarperDB's `update_node`/`add_node` on a known node).
    pub fn merged(&self, update: &Subscriptions) -> Subscriptions {
        let mut out = self.clone();
        for s in &update.0 {
            out.set(s.clone());
        }
        out
    }

    /// The node's view of the same subscriptions: what we publish it subscribes to.
    pub fn reversed(&self) -> Subscriptions {
        Subscriptions(
            self.0
                .iter()
                .map(|s| TableSub {
                    publish: s.subscribe,
                    subscribe: s.publish,
                    ..s.clone()
                })
                .collect(),
        )
    }

    pub fn publishes(&self, database: &str, table: &str) -> bool {
        self.entry(database, table).is_some_and(|s| s.publish)
    }

    pub fn subscribes(&self, database: &str, table: &str) -> bool {
        self.entry(database, table).is_some_and(|s| s.subscribe)
    }

    /// Whether any table of `database` is subscribed to.
    pub fn subscribes_any(&self, database: &str) -> bool {
        self.0.iter().any(|s| s.database == database && s.subscribe)
    }

    fn entry(&self, database: &str, table: &str) -> Option<&TableSub> {
        self.0
            .iter()
            .find(|s| s.database == database && s.table == table)
    }

    /// The databases where `new` subscribes to a table `old` did not (so what was skipped
    /// before must be copied once). From everything (None) to a list nothing grows; from a
    /// list to everything every database does.
    pub fn grown(old: Option<&Subscriptions>, new: Option<&Subscriptions>) -> Grown {
        match (old, new) {
            (None, _) => Grown::Some(Vec::new()),
            (Some(_), None) => Grown::All,
            (Some(old), Some(new)) => {
                let mut dbs: Vec<String> = new
                    .0
                    .iter()
                    .filter(|s| s.subscribe && !old.subscribes(&s.database, &s.table))
                    .map(|s| s.database.clone())
                    .collect();
                dbs.sort();
                dbs.dedup();
                Grown::Some(dbs)
            }
        }
    }

    /// HarperDB's shape: `[{schema|database, table, publish, subscribe}]`.
    pub fn to_value(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|s| {
                    let mut o = Object::new();
                    let key = if s.schema_key { "schema" } else { "database" };
                    o.insert(key, Value::String(s.database.clone()));
                    o.insert("table", Value::String(s.table.clone()));
                    o.insert("publish", Value::Bool(s.publish));
                    o.insert("subscribe", Value::Bool(s.subscribe));
                    Value::Object(o)
                })
                .collect(),
        )
    }
}

/// Which databases' subscribed tables grew.
#[derive(Debug, PartialEq)]
pub enum Grown {
    All,
    Some(Vec<String>),
}

/// `subscriptions` as stored and shown: the list, or null for "everything".
pub fn value_of(subs: Option<&Subscriptions>) -> Value {
    subs.map(Subscriptions::to_value).unwrap_or(Value::Null)
}

impl Replication {
    /// The record name `peer` (a node name, or the key it was added under) is kept under.
    fn subs_key(&self, peer: &str) -> String {
        if self.subs_lock().contains_key(peer) {
            return peer.to_string();
        }
        self.nodes()
            .into_iter()
            .find(|(key, name, _)| name.as_deref() == Some(peer) || key == peer)
            .map(|(key, _, _)| key)
            .unwrap_or_else(|| peer.to_string())
    }

    fn subs_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, PeerSubs>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The explicit subscriptions with `peer`, None when every table replicates.
    pub fn subscriptions_with(&self, peer: &str) -> Option<Subscriptions> {
        let key = self.subs_key(peer);
        self.subs_lock().get(&key).and_then(|p| p.subs.clone())
    }

    /// Whether `peer` has explicit subscriptions (no gossip, no relaying through it).
    pub fn explicit(&self, peer: &str) -> bool {
        self.subscriptions_with(peer).is_some()
    }

    /// Whether we take `table` of `database` from `peer`.
    pub fn takes_from(&self, peer: &str, database: &str, table: &str) -> bool {
        self.subscriptions_with(peer)
            .is_none_or(|s| s.subscribes(database, table))
    }

    /// `peer`'s subscriptions with when they were set.
    pub fn peer_subs(&self, peer: &str) -> PeerSubs {
        let key = self.subs_key(peer);
        self.subs_lock().get(&key).cloned().unwrap_or_default()
    }

    /// `add_node`/`update_node`/`configure_cluster` (docs/replication.md "Explicit
    /// subscriptions"): `update`'s tables merge into the node's list (None: every table
    /// replicates from now on); the record is stored, and a linked node is told and the link
    /// starts over with the new tables. A plain thread only (it waits for the commit).
    pub fn set_subscriptions(&self, key: &str, url: &str, update: Option<Subscriptions>) {
        let old = self.peer_subs(key);
        let subs = match (update, &old.subs) {
            (Some(u), Some(o)) => Some(o.merged(&u)),
            (u, _) => u,
        };
        let fresh = PeerSubs {
            subs,
            time: now().max(old.time + 1.0),
        };
        self.take_subs(key, url, &old, fresh);
        let body = self.subscriptions_body(key);
        let names: Vec<String> = std::iter::once(key.to_string())
            .chain(
                self.nodes()
                    .into_iter()
                    .filter(|(k, _, _)| k == key)
                    .filter_map(|(_, name, _)| name),
            )
            .collect();
        for name in names {
            if self.connected(&name) {
                tracing::info!("replication: subscriptions with {name} changed; relinking");
                self.send_to(&name, "SUBSCRIPTIONS", body.clone());
                self.close_link(&name, "subscriptions");
            }
        }
    }

    /// Stores `fresh` for `key` (map and `hdb_nodes`) and marks what it newly subscribes to
    /// for a copy at the next subscription.
    fn take_subs(&self, key: &str, url: &str, old: &PeerSubs, fresh: PeerSubs) {
        let grown = match Subscriptions::grown(old.subs.as_ref(), fresh.subs.as_ref()) {
            Grown::All => self.databases(),
            Grown::Some(dbs) => dbs,
        };
        {
            let mut resync = self.resync.lock().unwrap_or_else(|e| e.into_inner());
            for db in grown {
                resync.insert((key.to_string(), db));
            }
        }
        self.subs_lock().insert(key.to_string(), fresh);
        self.store_node(key, url);
    }

    /// A peer's view of our subscriptions (`HELLO` of the node that dialled, or
    /// `SUBSCRIPTIONS`): the later one wins.
    pub(crate) fn peer_view(&self, peer: &str, url: &str, body: &Value) -> Adopted {
        let Some(time) = message::as_f64(body.get("subscriptionsTime")) else {
            // A peer that sent none holds none: ours go to it if we have any.
            return if self.peer_subs(peer).time > 0.0 {
                Adopted::Ours
            } else {
                Adopted::Same
            };
        };
        let key = self.subs_key(peer);
        let ours = self.peer_subs(&key);
        if time < ours.time {
            return Adopted::Ours;
        }
        if time == ours.time {
            return Adopted::Same;
        }
        let theirs = match Subscriptions::parse(body.get("subscriptions")) {
            Ok(s) => s.map(|s| s.reversed()),
            Err(e) => {
                tracing::warn!("replication: {peer} sent unreadable subscriptions: {e}");
                return Adopted::Same;
            }
        };
        if theirs == ours.subs {
            // The same tables: only the time moves (no record written for it).
            if let Some(p) = self.subs_lock().get_mut(&key) {
                p.time = time;
            }
            return Adopted::Same;
        }
        tracing::info!("replication: {peer} changed the subscriptions with this node");
        self.take_subs(&key, url, &ours, PeerSubs { subs: theirs, time });
        Adopted::Changed
    }

    /// `{subscriptions, subscriptionsTime}`: our view with `peer`, for `HELLO` or
    /// `SUBSCRIPTIONS`.
    pub(crate) fn subscriptions_body(&self, peer: &str) -> Value {
        let p = self.peer_subs(peer);
        message::object(vec![
            ("subscriptions", value_of(p.subs.as_ref())),
            ("subscriptionsTime", Value::Float(p.time)),
        ])
    }

    /// Whether the next subscription to `database` from `peer` asks for a copy.
    pub(crate) fn resync_due(&self, peer: &str, database: &str) -> bool {
        let key = (self.subs_key(peer), database.to_string());
        self.resync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    /// The copy of `database` from `peer` arrived whole.
    pub(crate) fn resync_done(&self, peer: &str, database: &str) {
        let key = (self.subs_key(peer), database.to_string());
        self.resync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Forgets the subscriptions of a removed node.
    pub(crate) fn forget_subs(&self, peer: &str) {
        let key = self.subs_key(peer);
        self.subs_lock().remove(&key);
        self.resync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| p != &key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(db: &str, table: &str, publish: bool, subscribe: bool) -> Value {
        let mut o = Object::new();
        o.insert("schema", Value::String(db.into()));
        o.insert("table", Value::String(table.into()));
        o.insert("publish", Value::Bool(publish));
        o.insert("subscribe", Value::Bool(subscribe));
        Value::Object(o)
    }

    #[test]
    fn parse_merge_reverse_and_growth() {
        let given = Value::Array(vec![
            sub("radio", "genre", false, true),
            sub("listeners", "address", true, false),
        ]);
        let s = Subscriptions::parse(Some(&given)).unwrap().unwrap();
        assert!(s.subscribes("radio", "genre") && !s.publishes("radio", "genre"));
        assert!(s.publishes("listeners", "address") && !s.subscribes("listeners", "address"));
        assert!(!s.publishes("radio", "other") && !s.subscribes("radio", "other"));
        assert_eq!(s.to_value(), given);
        let r = s.reversed();
        assert!(r.publishes("radio", "genre") && !r.subscribes("radio", "genre"));
        assert_eq!(r.reversed(), s);
        let update =
            Subscriptions::parse(Some(&Value::Array(vec![sub("radio", "genre", true, true)])))
                .unwrap()
                .unwrap();
        let m = s.merged(&update);
        assert_eq!(m.0.len(), 2);
        assert!(m.publishes("radio", "genre"));
        assert_eq!(
            Subscriptions::grown(Some(&s.reversed()), Some(&m.reversed())),
            Grown::Some(vec!["radio".into()])
        );
        assert_eq!(
            Subscriptions::grown(Some(&s), Some(&m)),
            Grown::Some(vec![])
        );
        assert_eq!(Subscriptions::grown(Some(&s), None), Grown::All);
        assert_eq!(Subscriptions::grown(None, Some(&s)), Grown::Some(vec![]));
        assert_eq!(Subscriptions::parse(Some(&Value::Null)), Ok(None));
        assert!(Subscriptions::parse(Some(&Value::Int(1))).is_err());
        let bad = Value::Array(vec![Value::String("x".into())]);
        assert!(Subscriptions::parse(Some(&bad)).is_err());
    }
}
