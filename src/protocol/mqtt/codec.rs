//! MQTT 3.1.1 (level 4) and 5 packets behind one type of our own: check, then decode; encode.
//!
//! [`check`] reads only the fixed header and says whether a whole packet is buffered and how long
//! it is, refusing one over the configured maximum before any of it is decoded. [`decode`] then
//! parses exactly that packet; every field is bounded by the packet's own length, lists by named
//! constants. It never allocates more than the packet's size and never panics on input bytes.
//!
//! ```text
//! fixed header: type (4 bits) | flags (4 bits), remaining length (varint, 1–4 bytes)
//! variable header and payload: per packet type; v5 adds a properties block (varint length)
//! ```

use std::fmt;

use super::props::{Properties, PropsError};

/// MQTT's own ceiling on the remaining length (four varint bytes).
pub const REMAINING_BYTES_MAX: usize = 268_435_455;
/// Topic filters in one SUBSCRIBE or UNSUBSCRIBE. Reaching it makes the packet malformed.
pub const FILTERS_PER_PACKET_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet is larger than the configured maximum (v5 `0x95`).
    TooLarge { bytes: usize, max: usize },
    /// The bytes break the protocol; the connection closes (v5 `0x81`).
    Malformed(&'static str),
    /// A v5 property that is unknown, repeated or not allowed here (v5 `0x81`).
    Properties(PropsError),
    /// A CONNECT whose protocol name or level we do not speak (CONNACK `0x01` / `0x84`).
    UnsupportedLevel(u8),
    /// A protocol violation that is not about the bytes (v5 `0x82`).
    Protocol(&'static str),
    /// A v5 CONNECT that breaks the protocol after its level: answered with a CONNACK carrying
    /// the inner error's reason code, then closed (MQTT 5 §3.1.4).
    Connect5(Box<DecodeError>),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { bytes, max } => {
                write!(
                    f,
                    "packet of {bytes} bytes over the maximum {max} (http.maxBodySize)"
                )
            }
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
            DecodeError::Properties(e) => write!(f, "malformed properties: {e}"),
            DecodeError::UnsupportedLevel(l) => write!(f, "unsupported protocol level {l}"),
            DecodeError::Protocol(m) => write!(f, "protocol error: {m}"),
            DecodeError::Connect5(e) => write!(f, "CONNECT: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<PropsError> for DecodeError {
    fn from(e: PropsError) -> Self {
        DecodeError::Properties(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub level: Level,
    pub clean: bool,
    pub keep_alive_s: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// Present exactly when `qos > 0`.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Vec<u8>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// v5 reason code; 0 on 3.1.1.
    pub code: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16, code: u8) -> Self {
        Ack {
            packet_id,
            code,
            properties: Properties::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained always, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(String, SubOptions)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// v5 only; empty on 3.1.1.
    pub codes: Vec<u8>,
}

/// DISCONNECT and (v5) AUTH: a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: u8,
    pub properties: Properties,
}

impl Reason {
    pub fn new(code: u8) -> Self {
        Reason {
            code,
            properties: Properties::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Reason),
    Auth(Reason),
}

impl Packet {
    /// The packet type's name (MQTT 5 §2.1.2), for log lines.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Whether `buf` starts with a whole packet: `Ok(Some(len))` with its total length,
/// `Ok(None)` when more bytes are needed, an error when the header is bad or the packet is over
/// `packet_bytes_max` (known from the fixed header alone, before the body arrives).
pub fn check(buf: &[u8], packet_bytes_max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 == 0 {
        return Err(DecodeError::Malformed("packet type 0 is reserved"));
    }
    let mut remaining = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let total = i + 1 + remaining;
            if total > packet_bytes_max {
                return Err(DecodeError::TooLarge {
                    bytes: total,
                    max: packet_bytes_max,
                });
            }
            return Ok((buf.len() >= total).then_some(total));
        }
        shift += 7;
    }
    Err(DecodeError::Malformed("remaining length over four bytes"))
}

/// Decodes one whole packet (as measured by [`check`]). `level` is the connection's protocol level;
/// a CONNECT carries its own.
pub fn decode(packet: &[u8], level: Level) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(packet);
    let first = r.u8()?;
    r.varint()?;
    let flags = first & 0x0f;
    let v5 = level == Level::V5;
    let kind = first >> 4;
    let need_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed("reserved flags in the fixed header"))
        }
    };
    let packet = match kind {
        1 => {
            need_flags(0)?;
            Packet::Connect(decode_connect(&mut r)?)
        }
        2 => {
            need_flags(0)?;
            Packet::ConnAck(decode_connack(&mut r, v5)?)
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
        4..=7 => {
            need_flags(if kind == 6 { 2 } else { 0 })?;
            let ack = decode_ack(&mut r, v5)?;
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            need_flags(2)?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        9 => {
            need_flags(0)?;
            let packet_id = r.packet_id()?;
            let properties = v5_properties(&mut r, v5)?;
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                codes: r.rest().to_vec(),
            })
        }
        10 => {
            need_flags(2)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?)
        }
        11 => {
            need_flags(0)?;
            let packet_id = r.packet_id()?;
            let (properties, codes) = if v5 {
                (r.properties()?, r.rest().to_vec())
            } else {
                (Properties::default(), Vec::new())
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes,
            })
        }
        12 | 13 => {
            need_flags(0)?;
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            need_flags(0)?;
            Packet::Disconnect(decode_reason(&mut r, v5)?)
        }
        15 if v5 => {
            need_flags(0)?;
            Packet::Auth(decode_reason(&mut r, v5)?)
        }
        _ => return Err(DecodeError::Malformed("unknown packet type")),
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "bytes after the packet's last field",
        ));
    }
    Ok(packet)
}

/// The properties of a v5 packet; none at 3.1.1.
fn v5_properties(r: &mut Reader<'_>, v5: bool) -> Result<Properties, DecodeError> {
    if v5 {
        r.properties()
    } else {
        Ok(Properties::default())
    }
}

fn decode_connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags"));
    }
    let code = r.u8()?;
    let properties = v5_properties(r, v5)?;
    Ok(ConnAck {
        session_present: ack_flags & 1 == 1,
        code,
        properties,
    })
}

/// A PUBLISH; `flags` are its fixed header's (DUP, QoS, RETAIN).
fn decode_publish(r: &mut Reader<'_>, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = (flags >> 1) & 3;
    if qos == 3 {
        return Err(DecodeError::Malformed("QoS 3"));
    }
    let topic = r.string()?;
    let packet_id = if qos > 0 { r.packet_id()? } else { 0 };
    let properties = v5_properties(r, v5)?;
    if has_wildcard_response_topic(&properties) {
        return Err(DecodeError::Protocol("Response Topic with a wildcard"));
    }
    Ok(Publish {
        dup: flags & 8 != 0,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest().to_vec(),
    })
}

/// A Response Topic is a topic name: no `+` or `#` [MQTT-3.3.2-14].
fn has_wildcard_response_topic(properties: &Properties) -> bool {
    properties.iter().any(|p| match p {
        crate::protocol::mqtt::props::Property::ResponseTopic(t) => t.contains(['+', '#']),
        _ => false,
    })
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: v5 may leave out the reason code (success) and the
/// properties.
fn decode_ack(r: &mut Reader<'_>, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    let (code, properties) = if v5 && !r.is_empty() {
        let code = r.u8()?;
        let props = if r.is_empty() {
            Properties::default()
        } else {
            r.properties()?
        };
        (code, props)
    } else {
        (0, Properties::default())
    };
    Ok(Ack {
        packet_id,
        code,
        properties,
    })
}

fn decode_subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5)?;
    let filters = read_filters(r, "SUBSCRIBE without a topic filter", |r| {
        let filter = r.string()?;
        let options = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 || options & 3 == 3 || (options >> 4) & 3 == 3 {
            return Err(DecodeError::Malformed("subscription options"));
        }
        Ok((
            filter,
            SubOptions {
                qos: options & 3,
                no_local: options & 4 != 0,
                retain_as_published: options & 8 != 0,
                retain_handling: (options >> 4) & 3,
            },
        ))
    })?;
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// The topic filters of a SUBSCRIBE or UNSUBSCRIBE, each read by `one` up to the end of the
/// packet: at least one (else the protocol error `none`), at most `FILTERS_PER_PACKET_MAX`.
fn read_filters<'b, T>(
    r: &mut Reader<'b>,
    none: &'static str,
    mut one: impl FnMut(&mut Reader<'b>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut filters = Vec::new();
    while !r.is_empty() {
        if filters.len() == FILTERS_PER_PACKET_MAX {
            return Err(DecodeError::Malformed("too many topic filters"));
        }
        filters.push(one(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(none));
    }
    Ok(filters)
}

fn decode_unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5)?;
    let filters = read_filters(r, "UNSUBSCRIBE without a topic filter", Reader::string)?;
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_reason(r: &mut Reader<'_>, v5: bool) -> Result<Reason, DecodeError> {
    if !v5 || r.is_empty() {
        return Ok(Reason::new(0));
    }
    let code = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        r.properties()?
    };
    Ok(Reason { code, properties })
}

fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let level = match (name, level) {
        (b"MQTT", 4) => Level::V4,
        (b"MQTT", 5) => Level::V5,
        (b"MQTT" | b"MQIsdp", other) => return Err(DecodeError::UnsupportedLevel(other)),
        _ => return Err(DecodeError::Malformed("protocol name")),
    };
    decode_connect_at(r, level).map_err(|e| match level {
        Level::V5 => DecodeError::Connect5(Box::new(e)),
        Level::V4 => e,
    })
}

/// The rest of a CONNECT, after its protocol name and level.
fn decode_connect_at(r: &mut Reader<'_>, level: Level) -> Result<Connect, DecodeError> {
    let v5 = level == Level::V5;
    let flags = r.u8()?;
    if flags & 1 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag"));
    }
    let keep_alive_s = r.u16()?;
    let properties = if v5 {
        r.properties()?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 3;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if will_qos == 3 {
        return Err(DecodeError::Malformed("will QoS 3"));
    }
    let will = if will_flag {
        let properties = if v5 {
            r.properties()?
        } else {
            Properties::default()
        };
        if has_wildcard_response_topic(&properties) {
            return Err(DecodeError::Protocol("Response Topic with a wildcard"));
        }
        Some(Will {
            topic: r.string()?,
            payload: r.binary()?.to_vec(),
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    if !v5 && username.is_none() && flags & 0x40 != 0 {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let password = if flags & 0x40 != 0 {
        Some(r.binary()?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        level,
        clean: flags & 0x02 != 0,
        keep_alive_s,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Appends `packet` encoded for `level` to `out`. Properties are written only for v5.
pub fn encode(packet: &Packet, level: Level, out: &mut Vec<u8>) {
    let v5 = level == Level::V5;
    let at = out.len();
    out.push(0);
    let mut first = 0u8;
    put_with_length(out, |body| first = encode_body(packet, v5, body));
    if let Some(byte) = out.get_mut(at) {
        *byte = first;
    }
}

/// Writes the variable header and payload of `packet` to `body`; returns the fixed header's
/// first byte.
fn encode_body(packet: &Packet, v5: bool, body: &mut Vec<u8>) -> u8 {
    match packet {
        Packet::Connect(c) => {
            encode_connect(c, body);
            0x10
        }
        Packet::ConnAck(a) => {
            body.push(u8::from(a.session_present));
            body.push(a.code);
            if v5 {
                a.properties.encode(body);
            }
            0x20
        }
        Packet::Publish(p) => {
            put_binary(body, p.topic.as_bytes());
            if p.qos > 0 {
                body.extend_from_slice(&p.packet_id.to_be_bytes());
            }
            if v5 {
                p.properties.encode(body);
            }
            body.extend_from_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | ((p.qos & 3) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            body.extend_from_slice(&a.packet_id.to_be_bytes());
            // The short form (no reason, no properties) means success on v5.
            if v5 && (a.code != 0 || !a.properties.is_empty()) {
                body.push(a.code);
                if !a.properties.is_empty() {
                    a.properties.encode(body);
                }
            }
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            encode_subscribe(s, v5, body);
            0x82
        }
        Packet::SubAck(s) => {
            body.extend_from_slice(&s.packet_id.to_be_bytes());
            if v5 {
                s.properties.encode(body);
            }
            body.extend_from_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.extend_from_slice(&u.packet_id.to_be_bytes());
            if v5 {
                u.properties.encode(body);
            }
            for filter in &u.filters {
                put_binary(body, filter.as_bytes());
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            body.extend_from_slice(&u.packet_id.to_be_bytes());
            if v5 {
                u.properties.encode(body);
                body.extend_from_slice(&u.codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 && (d.code != 0 || !d.properties.is_empty()) {
                body.push(d.code);
                if !d.properties.is_empty() {
                    d.properties.encode(body);
                }
            }
            if matches!(packet, Packet::Disconnect(_)) {
                0xe0
            } else {
                0xf0
            }
        }
    }
}

/// The variable header and payload of a CONNECT (its own level decides the properties).
fn encode_connect(c: &Connect, body: &mut Vec<u8>) {
    put_binary(body, b"MQTT");
    body.push(if c.level == Level::V5 { 5 } else { 4 });
    let mut flags = 0u8;
    if c.clean {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive_s.to_be_bytes());
    let cv5 = c.level == Level::V5;
    if cv5 {
        c.properties.encode(body);
    }
    put_binary(body, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if cv5 {
            w.properties.encode(body);
        }
        put_binary(body, w.topic.as_bytes());
        put_binary(body, &w.payload);
    }
    if let Some(u) = &c.username {
        put_binary(body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_binary(body, p);
    }
}

fn encode_subscribe(s: &Subscribe, v5: bool, body: &mut Vec<u8>) {
    body.extend_from_slice(&s.packet_id.to_be_bytes());
    if v5 {
        s.properties.encode(body);
    }
    for (filter, o) in &s.filters {
        put_binary(body, filter.as_bytes());
        let mut options = o.qos & 3;
        if v5 {
            options |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling & 3) << 4;
        }
        body.push(options);
    }
}

pub(super) fn put_varint(out: &mut Vec<u8>, n: usize) {
    let (bytes, len) = varint(n);
    out.extend_from_slice(&bytes[..len]);
}

/// `n` as a variable byte integer (MQTT 5 §1.5.5): its bytes and how many of them.
fn varint(mut n: usize) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        bytes[len] = byte;
        len += 1;
        if n == 0 {
            return (bytes, len);
        }
    }
}

/// Appends what `write` writes, preceded by its length as a variable byte integer, without a
/// scratch buffer: room for a length of up to four bytes (every length a packet may have) is
/// left before it, then closed up.
pub(super) fn put_with_length(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    const ROOM: usize = 4;
    let at = out.len();
    out.extend_from_slice(&[0; ROOM]);
    write(out);
    let (prefix, n) = varint(out.len() - at - ROOM);
    if n <= ROOM {
        out[at..at + n].copy_from_slice(&prefix[..n]);
        out.copy_within(at + ROOM.., at + n);
        out.truncate(out.len() - (ROOM - n));
    } else {
        out.splice(at..at + ROOM, prefix[..n].iter().copied());
    }
}

pub(super) fn put_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers keep strings under 64 KiB (topics and ids come from decoded packets or our names);
    // a longer one is cut rather than written with a wrong length.
    let len = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(bytes.get(..len).unwrap_or_default());
}

/// A cursor over one packet's bytes; every read is bounds-checked.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Malformed("length overflow"))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Malformed("field runs past the packet"))?;
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }

    pub(super) fn varint(&mut self) -> Result<usize, DecodeError> {
        let mut n = 0usize;
        for i in 0..4 {
            let byte = self.u8()?;
            n |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer over four bytes",
        ))
    }

    pub(super) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string without U+0000 (MQTT-1.5.3-2).
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.binary()?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("U+0000 in a string"));
        }
        Ok(s.to_string())
    }

    fn properties(&mut self) -> Result<Properties, DecodeError> {
        let len = self.varint()?;
        let bytes = self.take(len)?;
        Properties::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::props::Property;
    use super::*;

    /// Decodes `bytes` at `level`, compares with `expected`, and checks that encoding gives the
    /// same bytes back.
    fn check(bytes: &[u8], level: Level, expected: &Packet) {
        assert_eq!(
            check_len(bytes),
            Some(bytes.len()),
            "check() on {bytes:02x?}"
        );
        let packet = decode(bytes, level).unwrap_or_else(|e| panic!("{e} on {bytes:02x?}"));
        assert_eq!(&packet, expected);
        let mut out = Vec::new();
        encode(&packet, level, &mut out);
        assert_eq!(out, bytes, "round trip of {packet:?}");
    }

    fn check_len(bytes: &[u8]) -> Option<usize> {
        super::check(bytes, 1 << 20).ok().flatten()
    }

    fn check_err(bytes: &[u8], level: Level, expected: DecodeError) {
        assert_eq!(decode(bytes, level), Err(expected), "on {bytes:02x?}");
    }

    fn props(list: Vec<Property>) -> Properties {
        Properties(list)
    }

    #[test]
    fn connect_v4_fixture() {
        // CONNECT, "MQTT" level 4, clean + user + password, keep alive 60, id "c1", user "u", pass "p"
        let bytes = [
            0x10, 0x15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60, 0, 2, b'c', b'1', 0, 1, b'u',
            0, 2, b'p', b'w',
        ];
        check(
            &bytes,
            Level::V4,
            &Packet::Connect(Connect {
                level: Level::V4,
                clean: true,
                keep_alive_s: 60,
                client_id: "c1".into(),
                will: None,
                username: Some("u".into()),
                password: Some(b"pw".to_vec()),
                properties: Properties::default(),
            }),
        );
    }

    #[test]
    fn connect_v5_with_will_fixture() {
        // Level 5, clean start, will QoS 1 retained, session expiry 10, will topic "w", payload "x".
        let bytes = [
            0x10, 0x19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x2e, 0, 10, 5, 0x11, 0, 0, 0, 10, 0, 1,
            b'a', 0, 0, 1, b'w', 0, 1, b'x',
        ];
        let mut bytes = bytes.to_vec();
        bytes[1] = (bytes.len() - 2) as u8;
        check(
            &bytes,
            Level::V4,
            &Packet::Connect(Connect {
                level: Level::V5,
                clean: true,
                keep_alive_s: 10,
                client_id: "a".into(),
                will: Some(Will {
                    topic: "w".into(),
                    payload: b"x".to_vec(),
                    qos: 1,
                    retain: true,
                    properties: Properties::default(),
                }),
                username: None,
                password: None,
                properties: props(vec![Property::SessionExpiryInterval(10)]),
            }),
        );
    }

    #[test]
    fn connect_levels() {
        let mut v3 = vec![0x10, 0, 0, 6];
        v3.extend_from_slice(b"MQIsdp");
        v3.extend_from_slice(&[3, 2, 0, 0, 0, 0]);
        v3[1] = (v3.len() - 2) as u8;
        check_err(&v3, Level::V4, DecodeError::UnsupportedLevel(3));
        let v6 = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 0];
        check_err(&v6, Level::V4, DecodeError::UnsupportedLevel(6));
        let bad = [0x10, 10, 0, 4, b'M', b'Q', b'X', b'T', 4, 2, 0, 0];
        check_err(&bad, Level::V4, DecodeError::Malformed("protocol name"));
    }

    #[test]
    fn publish_fixtures() {
        let qos0 = [0x31, 5, 0, 1, b'T', b'h', b'i'];
        check(
            &qos0,
            Level::V4,
            &Packet::Publish(Publish {
                dup: false,
                qos: 0,
                retain: true,
                topic: "T".into(),
                packet_id: 0,
                properties: Properties::default(),
                payload: b"hi".to_vec(),
            }),
        );
        // v5 QoS 2 DUP with a content type property.
        let qos2 = [
            0x3c, 13, 0, 1, b'T', 0, 7, 5, 0x03, 0, 2, b'a', b'b', b'{', b'}',
        ];
        check(
            &qos2,
            Level::V5,
            &Packet::Publish(Publish {
                dup: true,
                qos: 2,
                retain: false,
                topic: "T".into(),
                packet_id: 7,
                properties: props(vec![Property::ContentType("ab".into())]),
                payload: b"{}".to_vec(),
            }),
        );
        check_err(
            &[0x36, 3, 0, 1, b'T'],
            Level::V4,
            DecodeError::Malformed("QoS 3"),
        );
        check_err(
            &[0x32, 5, 0, 1, b'T', 0, 0],
            Level::V4,
            DecodeError::Malformed("packet identifier 0"),
        );
    }

    #[test]
    fn ack_fixtures() {
        check(&[0x40, 2, 0, 9], Level::V4, &Packet::PubAck(Ack::new(9, 0)));
        check(&[0x62, 2, 0, 9], Level::V4, &Packet::PubRel(Ack::new(9, 0)));
        check(
            &[0x50, 3, 0, 9, 0x10],
            Level::V5,
            &Packet::PubRec(Ack::new(9, 0x10)),
        );
        check(
            &[0x70, 2, 1, 0],
            Level::V5,
            &Packet::PubComp(Ack::new(256, 0)),
        );
        check_err(
            &[0x60, 2, 0, 9],
            Level::V4,
            DecodeError::Malformed("reserved flags in the fixed header"),
        );
    }

    #[test]
    fn subscribe_fixtures() {
        let v4 = [0x82, 8, 0, 1, 0, 3, b'T', b'/', b'#', 1];
        check(
            &v4,
            Level::V4,
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(
                    "T/#".into(),
                    SubOptions {
                        qos: 1,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                )],
            }),
        );
        // v5: subscription identifier 3, options retain handling 2, RAP, NL, QoS 2.
        let v5 = [0x82, 9, 0, 1, 2, 0x0b, 3, 0, 1, b'T', 0x2e];
        check(
            &v5,
            Level::V5,
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: props(vec![Property::SubscriptionIdentifier(3)]),
                filters: vec![(
                    "T".into(),
                    SubOptions {
                        qos: 2,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                )],
            }),
        );
        check_err(
            &[0x82, 6, 0, 1, 0, 1, b'T', 4],
            Level::V4,
            DecodeError::Malformed("subscription options"),
        );
        check_err(
            &[0x82, 2, 0, 1],
            Level::V4,
            DecodeError::Protocol("SUBSCRIBE without a topic filter"),
        );
        check(
            &[0x90, 4, 0, 1, 0, 0x80],
            Level::V4,
            &Packet::SubAck(SubAck {
                packet_id: 1,
                properties: Properties::default(),
                codes: vec![0, 0x80],
            }),
        );
        check(
            &[0xa2, 5, 0, 2, 0, 1, b'T'],
            Level::V4,
            &Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                properties: Properties::default(),
                filters: vec!["T".into()],
            }),
        );
        check(
            &[0xb0, 4, 0, 2, 0, 0x11],
            Level::V5,
            &Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                properties: Properties::default(),
                codes: vec![0x11],
            }),
        );
    }

    #[test]
    fn small_packets() {
        check(&[0xc0, 0], Level::V4, &Packet::PingReq);
        check(&[0xd0, 0], Level::V5, &Packet::PingResp);
        check(&[0xe0, 0], Level::V4, &Packet::Disconnect(Reason::new(0)));
        check(
            &[0xe0, 1, 0x04],
            Level::V5,
            &Packet::Disconnect(Reason::new(4)),
        );
        check(
            &[0x20, 2, 1, 0],
            Level::V4,
            &Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: Properties::default(),
            }),
        );
        check(
            &[0x20, 3, 0, 0x8c, 0],
            Level::V5,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: 0x8c,
                properties: Properties::default(),
            }),
        );
        // AUTH with method "x".
        check(
            &[0xf0, 6, 0x18, 4, 0x15, 0, 1, b'x'],
            Level::V5,
            &Packet::Auth(Reason {
                code: 0x18,
                properties: props(vec![Property::AuthenticationMethod("x".into())]),
            }),
        );
        check_err(
            &[0xf0, 0],
            Level::V4,
            DecodeError::Malformed("unknown packet type"),
        );
    }

    #[test]
    fn check_limits() {
        assert_eq!(super::check(&[], 100), Ok(None));
        assert_eq!(super::check(&[0x30], 100), Ok(None));
        assert_eq!(super::check(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(super::check(&[0x30, 3, 0], 100), Ok(None));
        assert_eq!(super::check(&[0x30, 1, 0, 0xff], 100), Ok(Some(3)));
        assert_eq!(
            super::check(&[0x30, 0xff, 0x7f], 100),
            Err(DecodeError::TooLarge {
                bytes: 16386,
                max: 100
            })
        );
        assert_eq!(
            super::check(&[0x30, 0xff, 0xff, 0xff, 0xff, 1], usize::MAX),
            Err(DecodeError::Malformed("remaining length over four bytes"))
        );
        assert_eq!(
            super::check(&[0x00, 0], 100),
            Err(DecodeError::Malformed("packet type 0 is reserved"))
        );
    }

    #[test]
    fn strings_are_checked() {
        check_err(
            &[0x30, 4, 0, 2, 0xff, 0xfe],
            Level::V4,
            DecodeError::Malformed("invalid UTF-8"),
        );
        check_err(
            &[0x30, 3, 0, 1, 0],
            Level::V4,
            DecodeError::Malformed("U+0000 in a string"),
        );
        check_err(
            &[0x30, 3, 0, 5, b'a'],
            Level::V4,
            DecodeError::Malformed("field runs past the packet"),
        );
    }
}
