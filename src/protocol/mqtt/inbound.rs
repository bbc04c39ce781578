//! Inbound PUBLISH (docs/mqtt.md): topic aliases, QoS 2 deduplication and its receive maximum,
//! then the write through the resource layer — a record put or delete (retained), a message
//! (not retained), or a general topic — and the acknowledgement with its reason code; wills.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tidepool_io::{race, spawn};

use super::codec::{Ack, Packet, Publish, Will};
use super::conn::{Flow, Session, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAX};
use super::connect::{permitted, Kick};
use super::dispatch::Sessions;
use super::durable;
use super::general;
use super::origin::Origin;
use super::payload;
use super::props::Property;
use super::reason::ReasonCode;
use super::shared::MqttShared;
use super::subscribe::NO_LOCAL;
use super::topic::PublishTopic;
use crate::change::Extras;
use crate::resource::{self, ConditionFailed, Validation, WriteError, WriteOp};
use crate::value::Value;

/// QoS 0 publishes of one connection queued on the writer and not yet committed, at most
/// (docs/mqtt.md, "Scale"); the next one waits for the oldest.
pub(super) const QOS0_IN_FLIGHT_MAX: usize = 64;

/// QoS 0 publishes queued and not yet settled, with their topics (for the log).
pub(super) type Pipeline = std::collections::VecDeque<(resource::Queued, String)>;

/// Logs a publish that failed; returns its v5 reason code.
fn failed(topic: &str, e: WriteError) -> ReasonCode {
    tracing::info!(target: "mqtt", "publish to {topic:?} failed: {e}");
    match e {
        WriteError::Invalid(_) => ReasonCode::PayloadFormatInvalid,
        WriteError::Overloaded(_) | WriteError::Storage(resource::StoreError::MapFull) => {
            ReasonCode::QuotaExceeded
        }
        WriteError::Condition(ConditionFailed::MayNotInsert | ConditionFailed::MayNotUpdate) => {
            ReasonCode::NotAuthorized
        }
        _ => ReasonCode::Unspecified,
    }
}

impl Session {
    /// PUBLISH: its topic alias resolved, QoS 2 duplicates acknowledged again, the write, the
    /// acknowledgement with its reason code (3.1.1: always success).
    pub(super) async fn on_publish(&mut self, mut p: Publish) -> Flow {
        self.sessions.sys.count_received();
        if let Some(alias) = p.properties.topic_alias() {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Flow::Close(ReasonCode::TopicAliasInvalid);
            }
            if p.topic.is_empty() {
                let rare = self.rare.get_mut().as_ref();
                match rare.and_then(|r| r.aliases.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => return Flow::Close(ReasonCode::ProtocolError),
                }
            } else {
                self.rare
                    .get_mut()
                    .get_or_insert_with(Box::default)
                    .aliases
                    .insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            // No topic and no alias to stand for it: a protocol error ([MQTT-3.3.2-1], 3.3.2.3.4).
            tracing::info!(target: "mqtt", "PUBLISH without a topic name or alias: closing");
            return Flow::Close(ReasonCode::ProtocolError);
        }
        if p.topic.contains(['+', '#']) {
            // A wildcard in a topic name is a protocol error, not a refusal ([MQTT-3.3.2-2],
            // [MQTT-4.7.3-1]): no acknowledgement, the connection is closed (v5: DISCONNECT 0x90).
            tracing::info!(target: "mqtt", "PUBLISH to {:?}: a wildcard in a topic name; closing", p.topic);
            return Flow::Close(ReasonCode::TopicNameInvalid);
        }
        if p.qos == 2 {
            if self
                .conn
                .acked()
                .qos2_received
                .borrow()
                .contains(&p.packet_id)
            {
                // A resend of one already applied (DUP): acknowledge, do not apply twice.
                self.conn.send(&Packet::PubRec(Ack::new(p.packet_id, 0)));
                return Flow::Continue;
            }
            if self.conn.acked().qos2_received.borrow().len() >= usize::from(RECEIVE_MAXIMUM) {
                return Flow::Close(ReasonCode::ReceiveMaximumExceeded);
            }
        }
        let code = self.apply(&p).await;
        let code = if self.v5() { code } else { ReasonCode::Success };
        match p.qos {
            1 => self
                .conn
                .send(&Packet::PubAck(Ack::new(p.packet_id, code.byte()))),
            2 => {
                if !code.is_failure() {
                    // Not there yet: checked above, and packets are handled one at a time.
                    self.conn
                        .acked()
                        .qos2_received
                        .borrow_mut()
                        .push(p.packet_id);
                }
                self.conn
                    .send(&Packet::PubRec(Ack::new(p.packet_id, code.byte())));
            }
            _ => {}
        }
        Flow::Continue
    }

    /// What `p` carries beyond its payload, for the subscribers (see `origin.rs`), when anyone
    /// could use it: v5 properties to pass on, a QoS that caps deliveries, a No Local
    /// subscription of this session, or a retained publish while Retain As Published
    /// subscriptions exist.
    fn origin(&self, p: &Publish, table: &str, op: &WriteOp) -> Option<Extras> {
        let origin = Origin::new(self.client_id(), p.retain, p.qos, &p.properties);
        let no_local = self
            .conn
            .subs
            .borrow()
            .iter()
            .any(|s| s.options & NO_LOCAL != 0);
        // Below QoS 2 the delivered QoS of a message is capped by the publish's.
        let capped =
            p.qos < 2 && (matches!(op, WriteOp::Message { .. }) || table == general::TABLE);
        let wanted = !origin.properties.is_empty()
            || capped
            || no_local
            || (p.retain && self.shared().retain_as_published.load(Ordering::Relaxed));
        wanted.then(|| Arc::new(origin) as Extras)
    }

    /// Applies one inbound publish through the resource layer; returns the v5 reason code.
    async fn apply(&self, p: &Publish) -> ReasonCode {
        // MQTT 5 §3.3.2.3.2: a payload declared UTF-8 must be.
        let utf8_declared = p
            .properties
            .iter()
            .any(|x| matches!(x, Property::PayloadFormatIndicator(1)));
        if utf8_declared && std::str::from_utf8(&p.payload).is_err() {
            tracing::info!(target: "mqtt", "publish to {:?} refused: payload is not the UTF-8 it declares", p.topic);
            return ReasonCode::PayloadFormatInvalid;
        }
        if self.shared().general_topics {
            let exported = PublishTopic::parse(&p.topic)
                .is_ok_and(|t| self.shared().resources.export(t.export).is_some());
            if !exported {
                return self.apply_general(p).await;
            }
        }
        let topic = match PublishTopic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} dropped: {e}", p.topic);
                return ReasonCode::TopicNameInvalid;
            }
        };
        let Some((db, table)) = self.shared().resources.export(topic.export) else {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: no export {:?}", p.topic, topic.export);
            return ReasonCode::TopicNameInvalid;
        };
        let def = &table.def;
        let id = match topic.id.map(|raw| resource::parse_id(def, raw)).transpose() {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} dropped: {e}", p.topic);
                return ReasonCode::TopicNameInvalid;
            }
        };
        let action = match (p.retain, &id) {
            // docs/mqtt.md: a bare table topic needs `insert`, retained or not.
            (_, None) => "insert",
            (true, Some(_)) if p.payload.is_empty() => "delete",
            _ => "update",
        };
        if !permitted(&self.caller, action, &def.database, &def.table) {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: not permitted", p.topic);
            return ReasonCode::NotAuthorized;
        }
        match self.table_write(p, def, id) {
            Ok(op) => self.submit(p, &db, &def.table, op).await,
            Err(code) => code,
        }
    }

    /// The write a permitted publish to a table makes: an empty retained publish deletes the
    /// record, another retained one replaces it (validated, attribute rights checked), one not
    /// retained is a message event.
    fn table_write(
        &self,
        p: &Publish,
        def: &crate::schema::TableDef,
        id: Option<Value>,
    ) -> Result<WriteOp, ReasonCode> {
        let content_type = p.properties.content_type();
        if p.retain && p.payload.is_empty() {
            let Some(key) = id else {
                return Err(ReasonCode::TopicNameInvalid);
            };
            return Ok(WriteOp::Delete {
                table: def.table.clone(),
                key,
            });
        }
        let value = match payload::decode(&p.payload, content_type) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(target: "mqtt", "publish to {:?} refused: {e}", p.topic);
                return Err(ReasonCode::PayloadFormatInvalid);
            }
        };
        if !p.retain {
            return Ok(WriteOp::Message {
                table: def.table.clone(),
                key: id,
                payload: value,
            });
        }
        let mut record = payload::record(value, content_type);
        // docs/security.md: a write touching an attribute without the right is refused.
        let attributes = record.iter().map(|(k, _)| k);
        let right = match id {
            Some(_) => resource::permissions::Action::Update,
            None => resource::permissions::Action::Insert,
        };
        let pk = def.primary_key.as_deref();
        if let Err(denied) = resource::permissions::check(
            &self.caller,
            &def.database,
            &def.table,
            pk,
            right,
            attributes,
        ) {
            let names: Vec<&str> = denied
                .required_attribute_permissions
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(denied.invalid.iter().map(String::as_str))
                .collect();
            tracing::info!(target: "mqtt", "publish to {:?} dropped: not permitted to write {names:?}", p.topic);
            return Err(ReasonCode::NotAuthorized);
        }
        if let Err(e) = resource::validate_record(def, &mut record, Validation::Full) {
            tracing::info!(target: "mqtt", "publish to {:?} refused: {e}", p.topic);
            return Err(ReasonCode::PayloadFormatInvalid);
        }
        Ok(WriteOp::Put {
            table: def.table.clone(),
            key: id,
            record: Value::Object(record),
            mode: crate::resource::PutMode::Replace,
            expires_in_s: None,
        })
    }

    /// Writes one publish's operation with its origin; returns the v5 reason code.
    async fn submit(
        &self,
        p: &Publish,
        db: &Arc<crate::resource::Database>,
        table: &str,
        op: WriteOp,
    ) -> ReasonCode {
        let extras = self.origin(p, table, &op);
        let queued = resource::queue_with_extras(db, &self.caller, vec![op], extras);
        let result = match queued {
            // docs/mqtt.md: QoS 0 publishes are pipelined (nothing to acknowledge): the next
            // packet is read while this one commits, up to a bound.
            Ok(queued) if p.qos == 0 => {
                self.pipeline(queued, &p.topic).await;
                return ReasonCode::Success;
            }
            Ok(queued) => queued.committed().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => ReasonCode::Success,
            Err(e) => failed(&p.topic, e),
        }
    }

    /// Keeps a queued QoS 0 publish's commit to settle later, first settling the oldest when
    /// [`QOS0_IN_FLIGHT_MAX`] are in flight.
    async fn pipeline(&self, queued: resource::Queued, topic: &str) {
        // Taken out and put back before any wait (a `Cell`, see [`Session::rare`]).
        let mut rare = self.rare.take();
        let oldest = rare
            .as_mut()
            .filter(|r| r.pending.len() >= QOS0_IN_FLIGHT_MAX)
            .and_then(|r| r.pending.pop_front());
        self.rare.set(rare);
        if let Some((oldest, topic)) = oldest {
            if let Err(e) = oldest.committed().await {
                failed(&topic, e);
            }
        }
        let mut rare = self.rare.take().unwrap_or_default();
        rare.pending.push_back((queued, topic.to_string()));
        self.rare.set(Some(rare));
    }

    /// Waits for every pipelined QoS 0 publish to commit (logging the failures): before any
    /// other packet is handled, so each of those comes after all earlier publishes are applied.
    pub(super) async fn settle(&self) {
        let Some(mut rare) = self.rare.take() else {
            return;
        };
        let pending = std::mem::take(&mut rare.pending);
        // The box goes once nothing is left in it.
        if !rare.is_empty() {
            self.rare.set(Some(rare));
        }
        for (queued, topic) in pending {
            if let Err(e) = queued.committed().await {
                failed(&topic, e);
            }
        }
    }

    /// A publish to a general topic (`mqtt.generalTopics`, see `general.rs`): retained → the
    /// record of the topic (expiring with the Message Expiry Interval), empty retained → delete,
    /// otherwise a message event.
    async fn apply_general(&self, p: &Publish) -> ReasonCode {
        if !super::topic::general_topic_valid(&p.topic) {
            tracing::info!(target: "mqtt", "publish to {:?} dropped: not a valid topic name", p.topic);
            return ReasonCode::TopicNameInvalid;
        }
        let Some((db, _)) = self
            .shared()
            .resources
            .table(durable::SYSTEM, general::TABLE)
        else {
            return ReasonCode::Unspecified;
        };
        let table = general::TABLE.to_string();
        let key = Value::String(p.topic.clone());
        let passed_on = Origin::new(self.client_id(), p.retain, p.qos, &p.properties).properties;
        let envelope =
            general::Envelope::new(&p.payload, p.qos, &passed_on, crate::resource::now_ms());
        let op = if p.retain && p.payload.is_empty() {
            WriteOp::Delete { table, key }
        } else if p.retain {
            let expiry_s = p.properties.iter().find_map(|x| match x {
                Property::MessageExpiryInterval(s) => Some(f64::from(*s)),
                _ => None,
            });
            WriteOp::Put {
                table,
                record: envelope.to_value(Some(&p.topic)),
                key: Some(key),
                mode: crate::resource::PutMode::Replace,
                expires_in_s: expiry_s,
            }
        } else {
            WriteOp::Message {
                table,
                key: Some(key),
                payload: envelope.to_value(None),
            }
        };
        self.submit(p, &db, general::TABLE, op).await
    }

    /// Publishes a will as its client would have.
    pub(super) async fn publish_will(&self, will: Will) {
        let p = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: 0,
            properties: will.properties,
            payload: will.payload,
        };
        let code = self.apply(&p).await;
        // A QoS 0 will is pipelined like any QoS 0 publish: settled here (failures logged).
        self.settle().await;
        if code.is_failure() {
            tracing::info!(target: "mqtt", "will to {:?} not published (0x{:02x})", p.topic, code.byte());
        }
    }

    /// After the connection ended: publishes its will now, or after its Will Delay Interval
    /// (MQTT 5 §3.1.3.2.2: the will waits that long, or until the session ends if that comes
    /// first, and is dropped if the client resumes the session meanwhile). Called while `kick`
    /// still holds the client id.
    pub(super) async fn leave_will(
        &self,
        will: Will,
        kick: &Arc<Kick>,
        shared: &Arc<MqttShared>,
        sessions: &Rc<Sessions>,
    ) {
        let delay_s = will
            .properties
            .iter()
            .find_map(|p| match p {
                Property::WillDelayInterval(s) => Some(*s),
                _ => None,
            })
            .unwrap_or(0)
            .min(self.expiry_s);
        if delay_s == 0 {
            Box::pin(self.publish_will(will)).await;
            return;
        }
        let waiting = match shared.wait_will(self.client_id(), kick) {
            Ok(waiting) => waiting,
            Err(send_now) => {
                if send_now {
                    Box::pin(self.publish_will(will)).await;
                }
                return;
            }
        };
        let (shared, conn, sessions) = (shared.clone(), self.conn.clone(), sessions.clone());
        let caller = self.caller.clone();
        spawn(async move {
            let delay = tidepool_io::sleep(Duration::from_secs(u64::from(delay_s)));
            // At shutdown the will goes out now rather than never; a new connection for the
            // client id settles it before the delay (see `MqttShared::claim`).
            let _ = race(race(delay, shared.shutdown.wait()), waiting.settled.wait()).await;
            if !shared.will_due(conn.client_id(), &waiting) {
                return;
            }
            let late = Session {
                conn,
                sessions,
                caller,
                expiry_s: 0,
                rare: Default::default(),
            };
            late.publish_will(will).await;
        });
    }
}
