//! MQTT 5 properties: the typed list a packet carries after its variable header.
//!
//! Kept as an ordered list of typed entries so unknown-to-us-but-valid ones (user properties,
//! correlation data) pass through unchanged and encoding is the exact inverse of decoding.
//! Decoding bounds the number of entries and rejects unknown identifiers and repeats of
//! properties that may appear once.

use std::fmt;

use super::codec::{put_binary, put_varint, put_with_length, DecodeError, Reader};

/// Entries in one properties block. Reaching it makes the packet malformed.
pub const PROPERTIES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropsError {
    Unknown(u8),
    Repeated(u8),
    TooMany,
    Field(&'static str),
}

impl fmt::Display for PropsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropsError::Unknown(id) => write!(f, "unknown property 0x{id:02x}"),
            PropsError::Repeated(id) => write!(f, "property 0x{id:02x} repeated"),
            PropsError::TooMany => write!(f, "more than {PROPERTIES_MAX} properties"),
            PropsError::Field(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Vec<u8>),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Vec<u8>),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQos(u8),
    RetainAvailable(u8),
    UserProperty(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

impl Property {
    fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => 0x01,
            MessageExpiryInterval(_) => 0x02,
            ContentType(_) => 0x03,
            ResponseTopic(_) => 0x08,
            CorrelationData(_) => 0x09,
            SubscriptionIdentifier(_) => 0x0b,
            SessionExpiryInterval(_) => 0x11,
            AssignedClientIdentifier(_) => 0x12,
            ServerKeepAlive(_) => 0x13,
            AuthenticationMethod(_) => 0x15,
            AuthenticationData(_) => 0x16,
            RequestProblemInformation(_) => 0x17,
            WillDelayInterval(_) => 0x18,
            RequestResponseInformation(_) => 0x19,
            ResponseInformation(_) => 0x1a,
            ServerReference(_) => 0x1c,
            ReasonString(_) => 0x1f,
            ReceiveMaximum(_) => 0x21,
            TopicAliasMaximum(_) => 0x22,
            TopicAlias(_) => 0x23,
            MaximumQos(_) => 0x24,
            RetainAvailable(_) => 0x25,
            UserProperty(..) => 0x26,
            MaximumPacketSize(_) => 0x27,
            WildcardSubscriptionAvailable(_) => 0x28,
            SubscriptionIdentifierAvailable(_) => 0x29,
            SharedSubscriptionAvailable(_) => 0x2a,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<Property>);

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, p: Property) {
        self.0.push(p);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Property> {
        self.0.iter()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.0.iter().find_map(|p| match p {
            Property::ContentType(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn session_expiry_s(&self) -> Option<u32> {
        self.0.iter().find_map(|p| match p {
            Property::SessionExpiryInterval(s) => Some(*s),
            _ => None,
        })
    }

    pub fn authentication_method(&self) -> Option<&str> {
        self.0.iter().find_map(|p| match p {
            Property::AuthenticationMethod(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn receive_maximum(&self) -> Option<u16> {
        self.0.iter().find_map(|p| match p {
            Property::ReceiveMaximum(s) => Some(*s),
            _ => None,
        })
    }

    pub fn maximum_packet_size(&self) -> Option<u32> {
        self.0.iter().find_map(|p| match p {
            Property::MaximumPacketSize(s) => Some(*s),
            _ => None,
        })
    }

    pub fn topic_alias(&self) -> Option<u16> {
        self.0.iter().find_map(|p| match p {
            Property::TopicAlias(s) => Some(*s),
            _ => None,
        })
    }

    pub fn subscription_identifier(&self) -> Option<u32> {
        self.0.iter().find_map(|p| match p {
            Property::SubscriptionIdentifier(s) => Some(*s),
            _ => None,
        })
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Properties, DecodeError> {
        use Property::*;
        let mut r = Reader::new(bytes);
        let mut list: Vec<Property> = Vec::new();
        while !r.is_empty() {
            if list.len() == PROPERTIES_MAX {
                return Err(PropsError::TooMany.into());
            }
            let id = r.u8()?;
            let p = match id {
                0x01 => PayloadFormatIndicator(r.u8()?),
                0x02 => MessageExpiryInterval(r.u32()?),
                0x03 => ContentType(r.string()?),
                0x08 => ResponseTopic(r.string()?),
                0x09 => CorrelationData(r.binary()?.to_vec()),
                0x0b => {
                    let n = r.varint()?;
                    if n == 0 {
                        return Err(PropsError::Field("subscription identifier 0").into());
                    }
                    SubscriptionIdentifier(n as u32)
                }
                0x11 => SessionExpiryInterval(r.u32()?),
                0x12 => AssignedClientIdentifier(r.string()?),
                0x13 => ServerKeepAlive(r.u16()?),
                0x15 => AuthenticationMethod(r.string()?),
                0x16 => AuthenticationData(r.binary()?.to_vec()),
                0x17 => RequestProblemInformation(r.u8()?),
                0x18 => WillDelayInterval(r.u32()?),
                0x19 => RequestResponseInformation(r.u8()?),
                0x1a => ResponseInformation(r.string()?),
                0x1c => ServerReference(r.string()?),
                0x1f => ReasonString(r.string()?),
                0x21 => match r.u16()? {
                    0 => return Err(PropsError::Field("receive maximum 0").into()),
                    n => ReceiveMaximum(n),
                },
                0x22 => TopicAliasMaximum(r.u16()?),
                0x23 => TopicAlias(r.u16()?),
                0x24 => MaximumQos(r.u8()?),
                0x25 => RetainAvailable(r.u8()?),
                0x26 => UserProperty(r.string()?, r.string()?),
                0x27 => match r.u32()? {
                    0 => return Err(PropsError::Field("maximum packet size 0").into()),
                    n => MaximumPacketSize(n),
                },
                0x28 => WildcardSubscriptionAvailable(r.u8()?),
                0x29 => SubscriptionIdentifierAvailable(r.u8()?),
                0x2a => SharedSubscriptionAvailable(r.u8()?),
                other => return Err(PropsError::Unknown(other).into()),
            };
            // User properties may repeat; a PUBLISH we send may carry several subscription ids.
            let repeatable = matches!(p, UserProperty(..) | SubscriptionIdentifier(_));
            if !repeatable && list.iter().any(|q| q.id() == id) {
                return Err(PropsError::Repeated(id).into());
            }
            list.push(p);
        }
        Ok(Properties(list))
    }

    /// Appends the properties block (length, then entries).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        use Property::*;
        put_with_length(out, |body| {
            for p in &self.0 {
                put_varint(body, usize::from(p.id()));
                match p {
                    PayloadFormatIndicator(v)
                    | RequestProblemInformation(v)
                    | RequestResponseInformation(v)
                    | MaximumQos(v)
                    | RetainAvailable(v)
                    | WildcardSubscriptionAvailable(v)
                    | SubscriptionIdentifierAvailable(v)
                    | SharedSubscriptionAvailable(v) => body.push(*v),
                    ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v)
                    | TopicAlias(v) => body.extend_from_slice(&v.to_be_bytes()),
                    MessageExpiryInterval(v)
                    | SessionExpiryInterval(v)
                    | WillDelayInterval(v)
                    | MaximumPacketSize(v) => body.extend_from_slice(&v.to_be_bytes()),
                    SubscriptionIdentifier(v) => put_varint(body, *v as usize),
                    ContentType(s)
                    | ResponseTopic(s)
                    | AssignedClientIdentifier(s)
                    | AuthenticationMethod(s)
                    | ResponseInformation(s)
                    | ServerReference(s)
                    | ReasonString(s) => put_binary(body, s.as_bytes()),
                    CorrelationData(b) | AuthenticationData(b) => put_binary(body, b),
                    UserProperty(k, v) => {
                        put_binary(body, k.as_bytes());
                        put_binary(body, v.as_bytes());
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], expected: Result<Vec<Property>, DecodeError>) {
        let got = Properties::decode(bytes);
        assert_eq!(got, expected.clone().map(Properties), "on {bytes:02x?}");
        if let Ok(list) = expected {
            let mut out = Vec::new();
            Properties(list).encode(&mut out);
            assert_eq!(out.get(1..), Some(bytes), "round trip");
        }
    }

    #[test]
    fn properties() {
        use Property::*;
        check(&[], Ok(vec![]));
        check(&[0x01, 1], Ok(vec![PayloadFormatIndicator(1)]));
        check(
            &[0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 0],
            Ok(vec![
                UserProperty("k".into(), "v".into()),
                UserProperty("k".into(), "".into()),
            ]),
        );
        check(&[0x0b, 0x80, 0x01], Ok(vec![SubscriptionIdentifier(128)]));
        check(
            &[0x21, 0, 0],
            Err(PropsError::Field("receive maximum 0").into()),
        );
        check(
            &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
            Err(PropsError::Repeated(0x11).into()),
        );
        check(&[0x7f], Err(PropsError::Unknown(0x7f).into()));
        check(
            &[0x02, 0, 0],
            Err(DecodeError::Malformed("field runs past the packet")),
        );
    }
}
