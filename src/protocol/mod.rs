//! Protocols: bytes to protocol-neutral requests and back. Nothing here touches `store`; requests
//! reach tables only through the resource layer.

pub mod http;
pub mod mqtt;
pub mod ops;
pub mod rest;
