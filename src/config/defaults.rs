//! The default `harperdb-config.yaml`, written to `<root>` on first start: the text of
//! `deploy/harperdb-config.yaml`, so the shipped file and the defaults cannot drift. Every key a
//! user may set appears there: the flattened override names (`HTTP_PORT`) are derived from it.

pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../deploy/harperdb-config.yaml");
