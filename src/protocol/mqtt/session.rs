//! The reader's side of an open MQTT connection: its [`Session`] (the connection's state, the
//! core's handles and who the client is) and the handling of each packet the read loop in
//! `conn.rs` decodes, in order. Inbound PUBLISH is in `inbound.rs`, SUBSCRIBE in
//! `subscribe.rs`, the outbound window in `outbound.rs`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::codec::{Ack, Level, Packet, Will};
use super::conn::Flow;
use super::dispatch::Sessions;
use super::durable;
use super::outbound::{Conn, Rare};
use super::reason::{self, ReasonCode};
use super::share;
use super::shared::MqttShared;
use crate::resource::Caller;

/// The reader's view of a connection: its session and who the client is. (It holds the
/// connection's state and the core's, not the reader's [`Live`](super::conn::Live): each is held once.)
pub(super) struct Session {
    pub(super) conn: Rc<Conn>,
    /// The core's sessions, and through them what all cores share ([`Session::shared`]).
    pub(super) sessions: Rc<Sessions>,
    pub(super) caller: Caller,
    /// Session Expiry Interval (s): 0 ends the session with the connection.
    pub(super) expiry_s: u32,
    /// What most sessions never hold (topic aliases, QoS 0 publishes not yet settled, the
    /// will), in one box while any is held: 8 bytes here rather than 24 for three boxes. A
    /// `Cell` (8 bytes narrower than a `RefCell`): taken and put back, never held across a
    /// wait.
    pub(super) rare: std::cell::Cell<Rare<SessionRare>>,
}

/// What a session holds only while it uses it (see [`Session::rare`]).
#[derive(Default)]
pub(super) struct SessionRare {
    /// v5 topic aliases the client set.
    pub(super) aliases: HashMap<u16, String>,
    /// QoS 0 publishes queued whose commits are not yet settled (`inbound.rs`).
    pub(super) pending: super::inbound::Pipeline,
    /// Published if the connection ends without DISCONNECT.
    pub(super) will: Option<Box<Will>>,
}

impl SessionRare {
    pub(super) fn is_empty(&self) -> bool {
        self.aliases.is_empty() && self.pending.is_empty() && self.will.is_none()
    }
}

impl Session {
    /// What all cores share (held by the core's sessions, not by each session: 8 bytes less in
    /// every idle connection's box).
    pub(super) fn shared(&self) -> &Arc<MqttShared> {
        &self.sessions.shared
    }

    /// The client id, held once, by the connection's state (see [`Conn::client_id`]).
    pub(super) fn client_id(&self) -> &str {
        self.conn.client_id()
    }

    pub(super) fn v5(&self) -> bool {
        self.conn.level == Level::V5
    }

    pub(super) fn durable(&self) -> bool {
        self.conn.durable()
    }

    /// Stores the session now (after its subscriptions changed), so a crash keeps them.
    pub(super) async fn persist(&self) {
        if !self.durable() || self.expiry_s == 0 {
            return;
        }
        let stored = self.conn.stored(self.expiry_s);
        if let Err(e) = durable::save(&self.shared().resources, self.client_id(), &stored).await {
            tracing::warn!(target: "mqtt", "storing the session of {:?} failed: {e}", self.client_id());
        }
    }

    /// At the end of the connection: stores a durable session with its expiry, or forgets a
    /// resumed one whose expiry is now 0.
    pub(super) async fn end(&self) {
        for sub in self.conn.subs.borrow().iter() {
            if let Some(group) = sub.filter.share() {
                let key = share::key(group, sub.filter.topic_filter());
                self.shared()
                    .groups
                    .leave(&key, self.client_id(), || self.shared().stamp());
            }
        }
        if !self.durable() {
            return;
        }
        let result = if self.expiry_s > 0 {
            let stored = self.conn.stored(self.expiry_s);
            durable::save(&self.shared().resources, self.client_id(), &stored).await
        } else {
            durable::discard(&self.shared().resources, self.client_id()).await
        };
        if let Err(e) = result {
            tracing::warn!(target: "mqtt", "storing the session of {:?} at disconnect failed: {e}", self.client_id());
        }
    }

    /// Handles one packet after CONNECT.
    pub(super) async fn handle(&mut self, packet: Packet) -> Flow {
        if !matches!(&packet, Packet::Publish(p) if p.qos == 0) {
            self.settle().await;
        }
        match packet {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if self.conn.completed(a.packet_id) {
                    self.conn.fill_state(&self.sessions);
                }
            }
            Packet::PubRec(a) => {
                if reason::is_failure(a.code) {
                    // The client refused it: the exchange ends here.
                    self.conn.completed(a.packet_id);
                } else {
                    let known = self.conn.received(a.packet_id);
                    let code = self.known_or_not_found(known);
                    self.conn.send(&Packet::PubRel(Ack::new(a.packet_id, code)));
                }
            }
            Packet::PubRel(a) => {
                let known = {
                    let mut received = self.conn.acked().qos2_received.borrow_mut();
                    let at = received.iter().position(|id| *id == a.packet_id);
                    at.map(|at| received.swap_remove(at)).is_some()
                };
                let code = self.known_or_not_found(known);
                self.conn
                    .send(&Packet::PubComp(Ack::new(a.packet_id, code)));
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s);
                self.persist().await;
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                self.persist().await;
            }
            Packet::PingReq => self.conn.send(&Packet::PingResp),
            Packet::Disconnect(r) => {
                if let Some(expiry_s) = r.properties.session_expiry_s() {
                    // MQTT 5 §3.14.2.2.2: a session that ends with its connection cannot be
                    // made durable at DISCONNECT.
                    if self.expiry_s == 0 && expiry_s > 0 {
                        return Flow::Close(ReasonCode::ProtocolError);
                    }
                    self.expiry_s = expiry_s;
                }
                // v5 0x04: "disconnect with will message".
                return Flow::Disconnect {
                    publish_will: r.code == ReasonCode::DisconnectWithWill.byte(),
                };
            }
            Packet::Auth(_) => return Flow::Close(ReasonCode::ProtocolError),
            Packet::Connect(_) => return Flow::Close(ReasonCode::ProtocolError),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Flow::Close(ReasonCode::ProtocolError)
            }
        }
        Flow::Continue
    }

    /// The code acknowledging a QoS 2 step for a packet id we may not know (v5 `0x92`; 3.1.1
    /// has no code for it).
    fn known_or_not_found(&self, known: bool) -> u8 {
        if known || !self.v5() {
            ReasonCode::Success.byte()
        } else {
            ReasonCode::PacketIdNotFound.byte()
        }
    }
}
