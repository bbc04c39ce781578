//! Protocols: bytes to protocol-neutral requests and back. Nothing here names `store`; requests
//! reach tables only through the resource layer, and the statuses of its typed errors are chosen
//! here (`status.rs`).

pub mod http;
pub mod mqtt;
pub mod ops;
pub mod rest;
pub mod sse;
pub mod status;
pub mod ws;
