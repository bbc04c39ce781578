//! Clone node (docs/replication.md, P1), the replication part: on a first start with `HDB_LEADER_URL`
//! (the leader's Operations API, `http://host:port`), `HDB_LEADER_USERNAME` and
//! `HDB_LEADER_PASSWORD` in the environment, ask the leader for its configuration, add it as a
//! node at its replication address with those credentials (`verify_tls: false`, so the link
//! exchanges certificates), and let the initial sync copy every replicated database (users and
//! roles with `system`). Before that, a first start without a configuration file writes the
//! leader's configuration minus node-specific keys as its own ([`leader_configuration_file`]).
//! It never speaks HTTPS to the leader (an `https://` URL is refused with a log line).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use super::{Replication, Target};

/// The leader's answer is read up to this many bytes.
const RESPONSE_BYTES_MAX: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers parsed at most.
const HEADERS_MAX: usize = 64;

/// Where and as whom to clone from.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

impl Leader {
    /// From `HDB_LEADER_URL`, `HDB_LEADER_USERNAME`, `HDB_LEADER_PASSWORD`.
    pub fn from_env() -> Option<Result<Leader, String>> {
        let url = std::env::var("HDB_LEADER_URL").ok()?;
        let username = std::env::var("HDB_LEADER_USERNAME").unwrap_or_default();
        let password = std::env::var("HDB_LEADER_PASSWORD").unwrap_or_default();
        Some(Self::parse(&url, username, password))
    }

    fn parse(url: &str, username: String, password: String) -> Result<Leader, String> {
        let rest = url.trim().trim_end_matches('/');
        if rest.starts_with("https://") {
            return Err("HDB_LEADER_URL: https is not supported yet; use the leader's http Operations API port".into());
        }
        let rest = rest.strip_prefix("http://").unwrap_or(rest);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("HDB_LEADER_URL {url:?}: host:port expected"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("HDB_LEADER_URL {url:?}: bad port"))?;
        Ok(Leader {
            host: host.to_string(),
            port,
            username,
            password,
        })
    }

    fn authorization(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// One Operations API call (HTTP/1.1, one connection per call).
    fn operation(&self, body: &serde_json::Value) -> Result<serde_json::Value, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "no address".to_string())?;
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let body = body.to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            self.authorization(),
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .take(RESPONSE_BYTES_MAX)
            .read_to_end(&mut response)
            .map_err(|e| e.to_string())?;
        parse_response(&response)
    }
}

/// Whether a configuration key (its path, lower case) belongs to this node and is never copied
/// from the leader (docs/replication.md "Clone a node"): the root and every path under it,
/// listening ports, certificate and key files, this node's replication name and URL.
fn node_specific(path: &[String]) -> bool {
    let last = path.last().map(String::as_str).unwrap_or("");
    let joined = path.join(".");
    matches!(
        joined.as_str(),
        "rootpath"
            | "replication.hostname"
            | "replication.url"
            | "storage.path"
            | "storage.audit.path"
            | "logging.file"
            | "logging.root"
            | "logging.path"
            | "logging.rotation.path"
            | "componentsroot"
            | "databases"
            | "cloned"
    ) || last.ends_with("port")
        || path.first().is_some_and(|p| p == "tls")
        || matches!(
            last,
            "certificate" | "privatekey" | "certificateauthority" | "domainsocket"
        )
}

/// The leader's configuration (`get_configuration`) without the keys that belong to each node.
pub fn shared_configuration(config: &serde_json::Value) -> serde_json::Value {
    fn strip(v: &serde_json::Value, path: &mut Vec<String>) -> Option<serde_json::Value> {
        if node_specific(path) {
            return None;
        }
        let serde_json::Value::Object(o) = v else {
            return Some(v.clone());
        };
        let mut out = serde_json::Map::new();
        for (k, v) in o {
            path.push(k.to_ascii_lowercase());
            if let Some(v) = strip(v, path) {
                out.insert(k.clone(), v);
            }
            path.pop();
        }
        (!out.is_empty() || path.is_empty()).then_some(serde_json::Value::Object(out))
    }
    strip(config, &mut Vec::new()).unwrap_or_default()
}

/// A first start with `HDB_LEADER_URL` and no configuration file: the leader's configuration
/// minus node-specific keys, as YAML to write as this node's file (settings given on the
/// command line or in the environment still win over it). Blocking: before the server starts.
pub fn leader_configuration_file() -> Option<Result<String, String>> {
    let leader = match Leader::from_env()? {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    let config = leader.operation(&serde_json::json!({"operation": "get_configuration"}));
    Some(config.and_then(|c| {
        let shared = shared_configuration(&c);
        serde_yaml::to_string(&shared).map_err(|e| e.to_string())
    }))
}

/// Status 200 and a JSON body with `Content-Length`, else an error naming what came.
fn parse_response(response: &[u8]) -> Result<serde_json::Value, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("the leader's answer is not HTTP".into()),
    };
    let body = response.get(head_len..).unwrap_or_default();
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(body.len());
    let body = body
        .get(..length)
        .ok_or("the leader's answer is cut short")?;
    let status = parsed.code.unwrap_or(0);
    if status != 200 {
        return Err(format!(
            "the leader answered {status}: {}",
            String::from_utf8_lossy(body)
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("the leader's answer: {e}"))
}

/// The leader's replication address from its configuration: the secure port when on, else
/// the plain one; a port bound to a specific address dials that address.
fn replication_target(leader: &Leader, config: &serde_json::Value) -> Option<Target> {
    let replication = config.get("replication")?;
    let (tls, port) = match (replication.get("securePort"), replication.get("port")) {
        (Some(p), _) if !p.is_null() => (true, p),
        (_, Some(p)) if !p.is_null() => (false, p),
        _ => return None,
    };
    let (host, port) = match port {
        serde_json::Value::Number(n) => (leader.host.clone(), u16::try_from(n.as_u64()?).ok()?),
        serde_json::Value::String(s) => match s.rsplit_once(':') {
            Some((h, p)) if h != "0.0.0.0" && !h.is_empty() => (h.to_string(), p.parse().ok()?),
            Some((_, p)) => (leader.host.clone(), p.parse().ok()?),
            None => (leader.host.clone(), s.parse().ok()?),
        },
        _ => return None,
    };
    Some(Target {
        host,
        port,
        start_time: None,
        tls: Some(tls),
        verify_tls: false,
        authorization: Some(leader.authorization()),
        retain_authorization: false,
    })
}

/// Starts the clone on a thread: find the leader's replication address, add it as a node.
/// The initial sync then copies the data, as for any empty node.
pub fn start(repl: &Arc<Replication>, leader: Leader) {
    let repl = repl.clone();
    let _ = std::thread::Builder::new()
        .name("repl-clone".into())
        .spawn(move || {
            let request = serde_json::json!({"operation": "get_configuration"});
            let target = leader.operation(&request).and_then(|config| {
                replication_target(&leader, &config)
                    .ok_or_else(|| "the leader has no replication port".to_string())
            });
            match target {
                Ok(target) => {
                    let key = target.address();
                    tracing::info!(
                        "replication: cloning from the leader at {}:{} (replication {})",
                        leader.host,
                        leader.port,
                        target.resolved_url(true)
                    );
                    let url = target.resolved_url(true);
                    repl.add_target(key.clone(), target, false);
                    repl.store_node(&key, &url);
                }
                Err(e) => tracing::error!(
                    "replication: cannot clone from {}:{}: {e}",
                    leader.host,
                    leader.port
                ),
            }
        });
}

/// Whether the user databases are still empty (no transactions of any origin).
pub fn first_start(repl: &Replication) -> bool {
    repl.store
        .database_names()
        .iter()
        .filter(|d| d.as_str() != "system")
        .all(|d| {
            repl.store
                .database(d)
                .and_then(|db| db.read().ok().and_then(|r| r.cursors().ok()))
                .is_none_or(|c| c.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, config: serde_json::Value, expected: Option<(&str, u16, bool)>) {
        let leader = Leader::parse(url, "u".into(), "p".into());
        let got = leader
            .ok()
            .and_then(|l| replication_target(&l, &config))
            .map(|t| (t.host, t.port, t.tls == Some(true)));
        assert_eq!(
            got.as_ref().map(|(h, p, s)| (h.as_str(), *p, *s)),
            expected,
            "{url} {config}"
        );
    }

    #[test]
    fn node_specific_keys_stay_local() {
        let leader = serde_json::json!({
            "rootPath": "/var/lib/a",
            "http": {"port": 9926, "securePort": null, "cors": false, "maxBodySize": 100},
            "operationsApi": {"network": {"port": 9925, "domainSocket": "/x"},
                              "tls": {"certificate": "/a.pem"}},
            "tls": {"certificate": "/c.pem", "privateKey": "/k.pem"},
            "replication": {"hostname": "node-a", "url": "wss://a:9933", "securePort": 9933,
                            "databases": "*", "routes": ["b"]},
            "logging": {"level": "warn", "root": "/var/log", "auditRetention": "5d",
                        "rotation": {"path": "/r", "maxSize": "10M"}},
            "storage": {"path": "/s", "compression": true},
        });
        assert_eq!(
            shared_configuration(&leader),
            serde_json::json!({
                "http": {"cors": false, "maxBodySize": 100},
                "replication": {"databases": "*", "routes": ["b"]},
                "logging": {"level": "warn", "auditRetention": "5d",
                            "rotation": {"maxSize": "10M"}},
                "storage": {"compression": true},
            })
        );
    }

    #[test]
    fn leader_replication_address() {
        let secure =
            serde_json::json!({"replication": {"securePort": "127.0.0.5:9933", "port": null}});
        check(
            "http://10.0.0.1:9925",
            secure.clone(),
            Some(("127.0.0.5", 9933, true)),
        );
        check(
            "10.0.0.1:9925",
            serde_json::json!({"replication": {"securePort": 9933}}),
            Some(("10.0.0.1", 9933, true)),
        );
        check(
            "http://h:1",
            serde_json::json!({"replication": {"securePort": null, "port": "0.0.0.0:7"}}),
            Some(("h", 7, false)),
        );
        check("http://h:1", serde_json::json!({"replication": {}}), None);
        check("https://h:1", secure.clone(), None);
        check("http://h", secure, None);
        assert!(
            parse_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}").is_err()
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}").ok(),
            Some(serde_json::json!({"a": 1}))
        );
    }
}
