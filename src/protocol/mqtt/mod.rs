//! MQTT 3.1.1 and 5 (docs/mqtt.md): the packet codec, topics and filters, and the connection loop
//! that turns packets into resource-layer reads and writes and subscription events into PUBLISH.
//!
//! It never touches `store` directly except through `resource` and the commits it is handed; it
//! never binds sockets (`server::mqtt` does). Payloads are decoded and encoded per connection
//! (docs/realtime.md) in `payload.rs`.

pub mod codec;
pub mod conn;
mod connect;
mod dispatch;
pub mod durable;
pub mod events;
pub mod general;
mod inbound;
mod index;
pub mod origin;
mod outbound;
pub mod payload;
pub mod props;
mod read;
pub mod reason;
mod resume;
mod session;
pub mod share;
mod shared;
mod subscribe;
pub mod sys;
pub mod topic;

pub use codec::{check, decode, encode, DecodeError, Level, Packet};
pub use props::{Properties, Property};
pub use topic::{Filter, PublishTopic, TopicError};
