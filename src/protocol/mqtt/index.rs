//! One core's index from topics to the connections subscribed to them (docs/mqtt.md, "Scale"):
//! a change is offered only to the connections whose filters can match it, so the cost of a
//! publish grows with its subscribers, not with the connections on the core.
//!
//! A filter without wildcards is indexed under its whole topic (`Dog/1`, a general topic
//! `home/kitchen`); a filter with a wildcard under its export (`Dog/#`, `Dog/+/temp`; all
//! general-topic wildcards share the export `""`); the super user's filters whose first level is
//! a wildcard (`#`, `+/5`) in one list every change looks at. Each connection appears once per
//! key however many of its filters share it; the dispatcher still checks every filter of a
//! candidate (`Filter::matches`), so the index only has to be a superset of the matches.

use std::collections::HashMap;
use std::rc::{Rc, Weak};

use super::outbound::Conn;
use super::topic::Filter;

/// Where a filter is indexed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Key {
    /// The whole topic of a filter without wildcards.
    Exact(String),
    /// The export of a filter with a wildcard after it (`""`: general topics).
    Wild(String),
    /// A filter whose first level is a wildcard.
    Every,
}

impl Key {
    pub(super) fn of(filter: &Filter) -> Key {
        let topic = filter.topic_filter();
        if filter.is_every() {
            Key::Every
        } else if topic.contains(['+', '#']) {
            Key::Wild(filter.export().to_string())
        } else {
            Key::Exact(topic.to_string())
        }
    }
}

/// The connections under one key, by their slot on this core.
type Members = HashMap<u64, Weak<Conn>>;

#[derive(Default)]
pub(super) struct Index {
    exact: HashMap<String, Members>,
    wild: HashMap<String, Members>,
    every: Members,
}

impl Index {
    fn members(&mut self, key: &Key) -> &mut Members {
        match key {
            Key::Exact(topic) => self.exact.entry(topic.clone()).or_default(),
            Key::Wild(export) => self.wild.entry(export.clone()).or_default(),
            Key::Every => &mut self.every,
        }
    }

    fn remove(&mut self, key: &Key, slot: u64) {
        let map = match key {
            Key::Exact(topic) => self.exact.get_mut(topic).map(|m| (m, topic, true)),
            Key::Wild(export) => self.wild.get_mut(export).map(|m| (m, export, false)),
            Key::Every => {
                self.every.remove(&slot);
                return;
            }
        };
        let Some((members, name, exact)) = map else {
            return;
        };
        members.remove(&slot);
        if members.is_empty() {
            let name = name.clone();
            if exact {
                self.exact.remove(&name);
            } else {
                self.wild.remove(&name);
            }
        }
    }

    /// Re-files `conn` under the keys of its filters now (after SUBSCRIBE, UNSUBSCRIBE, resume).
    pub(super) fn update(&mut self, conn: &Rc<Conn>) {
        let mut keys: Vec<Key> = conn
            .subs
            .borrow()
            .iter()
            .map(|s| Key::of(&s.filter))
            .collect();
        keys.sort();
        keys.dedup();
        let slot = conn.slot.get();
        let old = conn.keys.take();
        for key in old.iter().filter(|k| !keys.contains(k)) {
            self.remove(key, slot);
        }
        for key in keys.iter().filter(|k| !old.contains(k)) {
            self.members(key).insert(slot, Rc::downgrade(conn));
        }
        conn.keys.set(keys.into_boxed_slice());
    }

    /// Forgets `conn` (its connection ended).
    pub(super) fn forget(&mut self, conn: &Conn) {
        let slot = conn.slot.get();
        for key in conn.keys.take().iter() {
            self.remove(key, slot);
        }
    }

    /// The connections whose filters may match a change on `topic` of `export`, each once.
    pub(super) fn candidates(&self, export: &str, topic: &str) -> Vec<Rc<Conn>> {
        let lists = [
            self.exact.get(topic),
            self.wild.get(export),
            Some(&self.every),
        ];
        let mut lists = lists.into_iter().flatten().filter(|m| !m.is_empty());
        let Some(first) = lists.next() else {
            return Vec::new();
        };
        let mut out: Vec<(u64, Rc<Conn>)> = first
            .iter()
            .filter_map(|(slot, c)| Some((*slot, c.upgrade()?)))
            .collect();
        let mut merged = false;
        for more in lists {
            merged = true;
            out.extend(
                more.iter()
                    .filter_map(|(slot, c)| Some((*slot, c.upgrade()?))),
            );
        }
        if merged {
            out.sort_by_key(|(slot, _)| *slot);
            out.dedup_by_key(|(slot, _)| *slot);
        }
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// Connections filed, counting each once per key (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.exact.values().map(HashMap::len).sum::<usize>()
            + self.wild.values().map(HashMap::len).sum::<usize>()
            + self.every.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Key {
        Key::of(&Filter::parse(raw).expect("filter"))
    }

    #[test]
    fn filters_are_filed_by_topic_export_or_every() {
        assert_eq!(key("Dog/1"), Key::Exact("Dog/1".into()));
        assert_eq!(key("Dog"), Key::Exact("Dog".into()));
        assert_eq!(key("$share/g/Dog/1"), Key::Exact("Dog/1".into()));
        assert_eq!(key("Dog/#"), Key::Wild("Dog".into()));
        assert_eq!(key("Dog/+/temp"), Key::Wild("Dog".into()));
        let index = Index::default();
        assert_eq!(index.len(), 0);
        assert!(index.candidates("Dog", "Dog/1").is_empty());
    }
}
