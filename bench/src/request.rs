//! The request a load run sends, built once as bytes before the run starts.
//!
//! It owns the wire form of the one request every connection repeats: start line, `Host`, the
//! user's headers, `Authorization: Basic` from `--auth`, and `Content-Length` with the body. It
//! never touches a socket; connections copy these bytes into their write buffers.

/// Builds the request bytes. `headers` are `Name: value` lines as given on the command line.
pub fn build(
    method: &str,
    path: &str,
    host: &str,
    headers: &[String],
    auth: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    let has = |name: &str| {
        headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
    };
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    if !has("host") {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    for header in headers {
        out.extend_from_slice(header.trim().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(credentials) = auth {
        out.extend_from_slice(b"Authorization: Basic ");
        out.extend_from_slice(base64(credentials.as_bytes()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that usually carry a body get an explicit length even when it is empty, so servers
    // never wait for a body that is not coming.
    let body_method = matches!(method, "POST" | "PUT" | "PATCH");
    if (!body.is_empty() || body_method) && !has("content-length") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Standard base64 with padding (RFC 4648), for `Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let bytes = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let bits = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= group.len() {
                out.push(char::from(
                    ALPHABET[(bits >> (18 - 6 * index) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: (&str, &str, &[&str], Option<&str>, &str), expected: &str) {
        let (method, path, headers, auth, body) = args;
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        let bytes = build(method, path, "h:1", &headers, auth, body.as_bytes());
        assert_eq!(String::from_utf8_lossy(&bytes), expected);
    }

    #[test]
    fn requests() {
        check(
            ("GET", "/health", &[], None, ""),
            "GET /health HTTP/1.1\r\nHost: h:1\r\n\r\n",
        );
        check(
            (
                "POST",
                "/",
                &["Content-Type: application/json"],
                Some("HDB_ADMIN:password"),
                "{}",
            ),
            "POST / HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n\
             Authorization: Basic SERCX0FETUlOOnBhc3N3b3Jk\r\nContent-Length: 2\r\n\r\n{}",
        );
        check(
            ("PUT", "/x", &["host: other"], None, ""),
            "PUT /x HTTP/1.1\r\nhost: other\r\nContent-Length: 0\r\n\r\n",
        );
    }

    #[test]
    fn base64_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }
}
