//! What an MQTT publish carries that the store does not keep (MQTT 5 §3.3.2.3): its publisher
//! (for No Local), its RETAIN flag (for Retain As Published), its QoS (messages go out at most at
//! it) and the properties a broker passes on — Payload Format Indicator, Message Expiry Interval,
//! Content Type, Response Topic, Correlation Data and User Properties.
//!
//! A publishing connection attaches its [`Origin`] to the write request as the request's
//! [`crate::change::Extras`]; the commit carries it to every core's dispatch with the change, so
//! there is nothing to match and nothing shared. It never reaches the store: a durable session's
//! replay from the audit log delivers the payload without it.

use std::sync::Arc;

use super::props::{Properties, Property};
use crate::change::Commit;

/// A publish's extras, as subscribers get them.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub client_id: String,
    pub retain: bool,
    /// The publish's QoS: messages go out at most at it (docs/mqtt.md, MQTT 5 §3.8.4).
    pub qos: u8,
    /// The properties passed on (the kinds listed in the module documentation).
    pub properties: Properties,
    /// When the publish arrived (ms), for the Message Expiry countdown.
    pub received_ms: f64,
}

impl Origin {
    /// Keeps only the properties a broker forwards.
    pub fn new(client_id: &str, retain: bool, qos: u8, properties: &Properties) -> Origin {
        let mut kept = Properties::default();
        for p in properties.iter() {
            if matches!(
                p,
                Property::PayloadFormatIndicator(_)
                    | Property::MessageExpiryInterval(_)
                    | Property::ContentType(_)
                    | Property::ResponseTopic(_)
                    | Property::CorrelationData(_)
                    | Property::UserProperty(..)
            ) {
                kept.push(p.clone());
            }
        }
        Origin {
            client_id: client_id.to_string(),
            retain,
            qos,
            properties: kept,
            received_ms: crate::resource::now_ms(),
        }
    }

    /// The properties for a delivery now: the Message Expiry Interval counts down (MQTT 5
    /// docs/rest.md); `None` when the message has expired and must not be sent.
    pub fn outbound(&self, now_ms: f64) -> Option<Properties> {
        let mut out = Properties::default();
        for p in self.properties.iter() {
            match p {
                Property::MessageExpiryInterval(s) => {
                    let waited_s = ((now_ms - self.received_ms).max(0.0) / 1000.0) as u64;
                    let left = u64::from(*s).checked_sub(waited_s).filter(|l| *l > 0)?;
                    out.push(Property::MessageExpiryInterval(left as u32));
                }
                other => out.push(other.clone()),
            }
        }
        Some(out)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type()
    }

    /// The origin of the publish `commit` was written for, if any.
    pub fn of(commit: &Commit) -> Option<Arc<Origin>> {
        commit.extras.clone()?.downcast::<Origin>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn message_expiry_counts_down() {
        let props = Properties(vec![
            Property::MessageExpiryInterval(10),
            Property::TopicAlias(3),
            Property::UserProperty("k".into(), "v".into()),
        ]);
        let mut note = Origin::new("c", false, 1, &props);
        note.received_ms = 1000.0;
        assert_eq!(
            note.outbound(4500.0),
            Some(Properties(vec![
                Property::MessageExpiryInterval(7),
                Property::UserProperty("k".into(), "v".into()),
            ]))
        );
        assert_eq!(note.outbound(11_000.0), None);
    }
}
