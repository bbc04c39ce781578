//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5 §4.8.2) across every core: the
//! members of each group, and which member gets each event.
//!
//! Every core dispatches every commit, so the member an event goes to must be one decision, not
//! one per core, and no core may wait on another to make it. Each change of a group's members
//! (a join or a leave) is stamped with a version from the store's clock, so a commit is matched
//! against the members the group had at its version; the member is then a hash of the event
//! (commit version, table, record id) over that list. Every core computes the same answer from
//! the same history, with nothing shared on the way.
//!
//! The registry of members is behind a `Mutex`, touched only by SUBSCRIBE, UNSUBSCRIBE, resume
//! and the end of a connection. Dispatch reads a per-core copy ([`View`]) and checks two atomics
//! per event; it takes the lock only to refresh its copy after a change of members.
//!
//! This module never sends anything; the connection's dispatcher asks it and delivers.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Changes of members remembered per group — far more than cores can be apart in dispatching.
pub const HISTORY_MAX: usize = 64;

/// A group's members from a version on, in joining order.
type Members = Arc<[String]>;

/// A group's member lists, oldest first, each with the version it took effect at.
#[derive(Default, Clone)]
struct History(VecDeque<(f64, Members)>);

impl History {
    fn now(&self) -> Vec<String> {
        self.0.back().map(|(_, m)| m.to_vec()).unwrap_or_default()
    }

    fn push(&mut self, version: f64, members: Vec<String>) {
        self.0.push_back((version, members.into()));
        while self.0.len() > HISTORY_MAX {
            self.0.pop_front();
        }
    }

    /// The members at `version` (the oldest kept when it is older still).
    fn at(&self, version: f64) -> Option<&Members> {
        self.0
            .iter()
            .rev()
            .find(|(from, _)| *from <= version)
            .or_else(|| self.0.front())
            .map(|(_, m)| m)
    }
}

/// The groups of the whole process, keyed by share name and topic filter.
#[derive(Default)]
pub struct Groups {
    registry: Mutex<HashMap<String, History>>,
    /// Joins and leaves under way: a core that sees one refreshes its [`View`] under the lock,
    /// so no commit is matched against members older than a change stamped before it.
    changing: AtomicUsize,
    /// Bumped by every completed join or leave.
    generation: AtomicU64,
}

/// One core's copy of the registry, refreshed when the members of any group changed.
#[derive(Default)]
pub struct View {
    generation: u64,
    groups: HashMap<String, History>,
}

/// The key of a group: its share name and its topic filter.
pub fn key(share: &str, topic_filter: &str) -> String {
    let mut out = String::new();
    key_into(share, topic_filter, &mut out);
    out
}

/// [`key`] written into `out` (kept when it already holds it): the dispatcher asks about every
/// member of a group for each change, and builds the key once.
pub fn key_into(share: &str, topic_filter: &str, out: &mut String) {
    let same = out.len() == share.len() + 1 + topic_filter.len()
        && out.starts_with(share)
        && out[share.len()..].starts_with('\u{0}')
        && out.ends_with(topic_filter);
    if !same {
        out.clear();
        out.push_str(share);
        out.push('\u{0}');
        out.push_str(topic_filter);
    }
}

/// What picks a group's member for the event of commit `version` on `table`/`id`: the same on
/// every core, and the same for every member asked.
pub fn pick_hash(version: f64, table: &str, id: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    (version.to_bits(), table, id).hash(&mut hasher);
    hasher.finish()
}

impl Groups {
    /// Adds `client_id` to group `key` from the version `stamp` gives (the store's clock).
    pub fn join(&self, key: &str, client_id: &str, stamp: impl FnOnce() -> f64) {
        self.change(key, stamp, |members| {
            if !members.iter().any(|m| m == client_id) {
                members.push(client_id.to_string());
            }
        });
    }

    /// Takes `client_id` out of group `key` from the version `stamp` gives.
    pub fn leave(&self, key: &str, client_id: &str, stamp: impl FnOnce() -> f64) {
        self.change(key, stamp, |members| members.retain(|m| m != client_id));
    }

    fn change(&self, key: &str, stamp: impl FnOnce() -> f64, edit: impl FnOnce(&mut Vec<String>)) {
        self.changing.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut groups) = self.registry.lock() {
            let history = groups.entry(key.to_string()).or_default();
            let mut members = history.now();
            let before = members.len();
            edit(&mut members);
            if members.len() != before {
                history.push(stamp(), members);
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            // An empty group goes: the members it had have left, so an older commit still on
            // its way has no one left to go to.
            if history.now().is_empty() {
                groups.remove(key);
            }
        }
        self.changing.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether `client_id` is the member of group `key` that gets the event of commit `version`
    /// on `table`/`id`, as every core decides it; `view` is this core's copy of the registry.
    #[cfg(test)]
    pub fn is_chosen(
        &self,
        view: &mut View,
        key: &str,
        version: f64,
        table: &str,
        id: Option<&str>,
        client_id: &str,
    ) -> bool {
        let pick = pick_hash(version, table, id);
        self.is_picked(view, key, version, pick, client_id)
    }

    /// [`Groups::is_chosen`] with the event's [`pick_hash`] computed already.
    pub fn is_picked(
        &self,
        view: &mut View,
        key: &str,
        version: f64,
        pick: u64,
        client_id: &str,
    ) -> bool {
        let stale = self.changing.load(Ordering::SeqCst) > 0
            || self.generation.load(Ordering::SeqCst) != view.generation;
        if stale {
            if let Ok(groups) = self.registry.lock() {
                view.generation = self.generation.load(Ordering::SeqCst);
                view.groups = groups.clone();
            }
        }
        let Some(members) = view.groups.get(key).and_then(|h| h.at(version)) else {
            return false;
        };
        if members.is_empty() {
            return false;
        }
        let at = (pick % members.len() as u64) as usize;
        members.get(at).is_some_and(|m| m == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Every member asks, on its own core's view, about each of `events` events: exactly one
    /// member gets each; returns how many each got.
    fn spread(
        groups: &Groups,
        k: &str,
        members: &[&str],
        events: std::ops::Range<u32>,
    ) -> Vec<usize> {
        let mut views: Vec<View> = members.iter().map(|_| View::default()).collect();
        let mut got = vec![0; members.len()];
        for v in events {
            let winners: Vec<usize> = (0..members.len())
                .filter(|&i| {
                    groups.is_chosen(&mut views[i], k, f64::from(v), "Dog", Some("1"), members[i])
                })
                .collect();
            assert_eq!(winners.len(), 1, "exactly one member for event {v}");
            got[winners[0]] += 1;
        }
        got
    }

    #[test]
    fn one_member_per_event_on_every_core() {
        let groups = Groups::default();
        let k = key("g", "Dog/#");
        let clock = Cell::new(0.0);
        let stamp = || {
            clock.set(clock.get() + 1.0);
            clock.get()
        };
        groups.join(&k, "a", stamp);
        groups.join(&k, "b", stamp);
        groups.join(&k, "c", stamp);
        let got = spread(&groups, &k, &["a", "b", "c"], 10..310);
        assert!(
            got.iter().all(|n| *n > 50),
            "each member gets a share: {got:?}"
        );
    }

    #[test]
    fn commits_are_matched_against_the_members_at_their_version() {
        let groups = Groups::default();
        let k = key("g", "Dog/#");
        groups.join(&k, "a", || 1.0);
        groups.join(&k, "b", || 100.0);
        // Before b joined, a got everything; b never does, whoever asks first.
        assert_eq!(spread(&groups, &k, &["a", "b"], 2..100), vec![98, 0]);
        groups.leave(&k, "a", || 200.0);
        assert_eq!(spread(&groups, &k, &["a", "b"], 201..211), vec![0, 10]);
    }
}
