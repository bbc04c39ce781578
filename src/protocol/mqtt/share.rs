//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5 §4.8.2) across every core: the
//! members of each group, and which member gets each event.
//!
//! Every core dispatches every commit, so the member an event goes to must be one decision, not
//! one per core: the first core to ask picks the group's next member (round-robin) and records
//! the choice; the other cores read it. Choices are kept for the newest [`DECISIONS_MAX`] events
//! per group — far more than cores can be apart in dispatching.
//!
//! This module never sends anything; the connection's dispatcher asks it and delivers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Choices remembered per group.
pub const DECISIONS_MAX: usize = 4096;

/// An event as groups tell them apart: commit version (bits), table, record id.
type EventId = (u64, String, Option<String>);

#[derive(Default)]
struct Group {
    /// Client ids in joining order.
    members: Vec<String>,
    next: usize,
    decided: HashMap<EventId, String>,
    order: VecDeque<EventId>,
}

/// The groups of the whole process, keyed by share name and topic filter.
#[derive(Default)]
pub struct Groups {
    groups: Mutex<HashMap<String, Group>>,
}

/// The key of a group: its share name and its topic filter.
pub fn key(share: &str, topic_filter: &str) -> String {
    format!("{share}\u{0}{topic_filter}")
}

impl Groups {
    pub fn join(&self, key: &str, client_id: &str) {
        if let Ok(mut groups) = self.groups.lock() {
            let group = groups.entry(key.to_string()).or_default();
            if !group.members.iter().any(|m| m == client_id) {
                group.members.push(client_id.to_string());
            }
        }
    }

    pub fn leave(&self, key: &str, client_id: &str) {
        if let Ok(mut groups) = self.groups.lock() {
            if let Some(group) = groups.get_mut(key) {
                group.members.retain(|m| m != client_id);
                if group.members.is_empty() {
                    groups.remove(key);
                }
            }
        }
    }

    /// Whether `client_id` is the member of group `key` that gets the event.
    pub fn is_chosen(
        &self,
        key: &str,
        version: f64,
        table: &str,
        id: Option<&str>,
        client_id: &str,
    ) -> bool {
        let Ok(mut groups) = self.groups.lock() else {
            return false;
        };
        let Some(group) = groups.get_mut(key) else {
            return false;
        };
        let event: EventId = (version.to_bits(), table.to_string(), id.map(str::to_string));
        if let Some(chosen) = group.decided.get(&event) {
            return chosen == client_id;
        }
        if group.members.is_empty() {
            return false;
        }
        let chosen = group.members[group.next % group.members.len()].clone();
        group.next = group.next.wrapping_add(1);
        let is_me = chosen == client_id;
        group.decided.insert(event.clone(), chosen);
        group.order.push_back(event);
        while group.order.len() > DECISIONS_MAX {
            if let Some(old) = group.order.pop_front() {
                group.decided.remove(&old);
            }
        }
        is_me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members join; events 1..=n are asked about by every member (as every core would);
    /// expects who got each.
    fn check(members: &[&str], events: usize, expected: &[&str]) {
        let groups = Groups::default();
        let k = key("g", "Dog/#");
        for m in members {
            groups.join(&k, m);
        }
        let got: Vec<String> = (1..=events)
            .map(|v| {
                let winners: Vec<&str> = members
                    .iter()
                    .copied()
                    .filter(|m| groups.is_chosen(&k, v as f64, "Dog", Some("1"), m))
                    .collect();
                assert_eq!(winners.len(), 1, "exactly one member per event");
                winners[0].to_string()
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn round_robin_one_member_per_event() {
        check(&["a", "b"], 4, &["a", "b", "a", "b"]);
        check(&["a", "b", "c"], 4, &["a", "b", "c", "a"]);
        check(&["a"], 2, &["a", "a"]);
    }
}
