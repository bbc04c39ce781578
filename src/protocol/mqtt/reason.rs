//! MQTT reason and return codes, one typed table per protocol version (docs/mqtt.md): what the
//! connection sends in CONNACK, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK, UNSUBACK and DISCONNECT.
//! The codec carries codes as bytes; they are chosen here by name.

use super::codec::{DecodeError, Level};
use super::props::PropsError;

/// MQTT 5 reason codes tidepool sends (MQTT 5 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00,
    /// DISCONNECT from the client: publish the will (MQTT 5 §3.14.2.1).
    DisconnectWithWill = 0x04,
    NoSubscriptionExisted = 0x11,
    Unspecified = 0x80,
    Malformed = 0x81,
    ProtocolError = 0x82,
    UnsupportedProtocolVersion = 0x84,
    ClientIdNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    ServerShuttingDown = 0x8b,
    BadAuthMethod = 0x8c,
    KeepAliveTimeout = 0x8d,
    SessionTakenOver = 0x8e,
    TopicFilterInvalid = 0x8f,
    TopicNameInvalid = 0x90,
    PacketIdNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    QuotaExceeded = 0x97,
    PayloadFormatInvalid = 0x99,
    SharedNotSupported = 0x9e,
}

impl ReasonCode {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// Codes from 0x80 up report a failure (MQTT 5 §2.4).
    pub fn is_failure(self) -> bool {
        is_failure(self.byte())
    }
}

impl ReasonCode {
    /// The code a connection closed for a packet that could not be taken is given (DISCONNECT,
    /// or CONNACK for a v5 CONNECT): a property repeated or zero where the specification calls
    /// that a Protocol Error is `0x82`, as are the other protocol violations; bytes that do not
    /// parse are `0x81`.
    pub fn for_decode_error(e: &DecodeError) -> ReasonCode {
        match e {
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::Protocol(_)
            | DecodeError::Properties(PropsError::Repeated(_) | PropsError::Field(_)) => {
                ReasonCode::ProtocolError
            }
            DecodeError::UnsupportedLevel(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::Connect5(inner) => ReasonCode::for_decode_error(inner),
            DecodeError::Malformed(_) | DecodeError::Properties(_) => ReasonCode::Malformed,
        }
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> u8 {
        code.byte()
    }
}

/// Whether a reason code byte a client sent reports a failure (MQTT 5 §2.4).
pub fn is_failure(code: u8) -> bool {
    code >= 0x80
}

/// MQTT 3.1.1 CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReturnCode {
    Accepted = 0x00,
    UnacceptableProtocolVersion = 0x01,
    IdentifierRejected = 0x02,
    ServerUnavailable = 0x03,
    BadUserNameOrPassword = 0x04,
    NotAuthorized = 0x05,
}

/// The MQTT 3.1.1 SUBACK return code of a refused filter (MQTT 3.1.1 §3.9.3); granted filters
/// return their QoS.
pub const SUBACK_FAILURE_V4: u8 = 0x80;

/// CONNACK return codes by situation (docs/mqtt.md table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedLevel,
    ClientIdRefused,
    Unavailable,
    BadCredentials,
    NotAuthorized,
    BadAuthMethod,
    /// Too many failed logins for this user name from this address (docs/security.md "Failed logins").
    QuotaExceeded,
    /// A Will Topic that is not a topic name (empty or with a wildcard); v5 only, 3.1.1 closes.
    WillTopicInvalid,
    /// The password-check threads are all busy (docs/security.md "Password checks").
    Busy,
}

impl Refusal {
    /// The (3.1.1, 5) codes of each refusal. 3.1.1 has neither AUTH, a quota nor a topic code;
    /// the closest is "not authorized".
    fn codes(self) -> (ReturnCode, ReasonCode) {
        match self {
            Refusal::UnsupportedLevel => (
                ReturnCode::UnacceptableProtocolVersion,
                ReasonCode::UnsupportedProtocolVersion,
            ),
            Refusal::ClientIdRefused => {
                (ReturnCode::IdentifierRejected, ReasonCode::ClientIdNotValid)
            }
            Refusal::Unavailable => (ReturnCode::ServerUnavailable, ReasonCode::ServerUnavailable),
            Refusal::Busy => (ReturnCode::ServerUnavailable, ReasonCode::ServerBusy),
            Refusal::BadCredentials => (
                ReturnCode::BadUserNameOrPassword,
                ReasonCode::BadUserNameOrPassword,
            ),
            Refusal::NotAuthorized => (ReturnCode::NotAuthorized, ReasonCode::NotAuthorized),
            Refusal::QuotaExceeded => (ReturnCode::NotAuthorized, ReasonCode::QuotaExceeded),
            Refusal::WillTopicInvalid => (ReturnCode::NotAuthorized, ReasonCode::TopicNameInvalid),
            Refusal::BadAuthMethod => (ReturnCode::NotAuthorized, ReasonCode::BadAuthMethod),
        }
    }

    /// The CONNACK code byte at `level`.
    pub fn code(self, level: Level) -> u8 {
        let (v4, v5) = self.codes();
        if level == Level::V5 {
            v5.byte()
        } else {
            v4 as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_close_with_the_specifications_codes() {
        let cases = [
            (DecodeError::TooLarge { bytes: 2, max: 1 }, 0x95),
            (DecodeError::Malformed("x"), 0x81),
            (DecodeError::Properties(PropsError::Unknown(0x7f)), 0x81),
            (DecodeError::Properties(PropsError::TooMany), 0x81),
            (DecodeError::Properties(PropsError::Repeated(0x11)), 0x82),
            (
                DecodeError::Properties(PropsError::Field("receive maximum 0")),
                0x82,
            ),
            (DecodeError::Protocol("x"), 0x82),
            (DecodeError::UnsupportedLevel(6), 0x84),
            (
                DecodeError::Connect5(Box::new(DecodeError::Malformed("x"))),
                0x81,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(ReasonCode::for_decode_error(&e).byte(), code, "{e:?}");
        }
    }

    fn check(refusal: Refusal, v4: u8, v5: u8) {
        assert_eq!(
            (refusal.code(Level::V4), refusal.code(Level::V5)),
            (v4, v5),
            "{refusal:?}"
        );
    }

    #[test]
    fn connack_codes_follow_the_spec_table() {
        check(Refusal::UnsupportedLevel, 0x01, 0x84);
        check(Refusal::ClientIdRefused, 0x02, 0x85);
        check(Refusal::WillTopicInvalid, 0x05, 0x90);
        check(Refusal::Unavailable, 0x03, 0x88);
        check(Refusal::Busy, 0x03, 0x89);
        check(Refusal::BadCredentials, 0x04, 0x86);
        check(Refusal::NotAuthorized, 0x05, 0x87);
        check(Refusal::BadAuthMethod, 0x05, 0x8c);
        check(Refusal::QuotaExceeded, 0x05, 0x97);
    }

    #[test]
    fn failure_codes_start_at_0x80() {
        assert!(!ReasonCode::Success.is_failure());
        assert!(!ReasonCode::NoSubscriptionExisted.is_failure());
        assert!(ReasonCode::Unspecified.is_failure());
        assert!(ReasonCode::SharedNotSupported.is_failure());
    }
}
