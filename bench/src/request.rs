//! The request a load run sends, built once as bytes before the run starts.
//!
//! It owns the wire form of the one request every connection repeats: start line, `Host`, the
//! user's headers, `Authorization: Basic` from `--auth`, and `Content-Length` with the body. It
//! never touches a socket; connections copy these bytes into their write buffers.
//!
//! A path may hold one `{n}` ([`NUMBER_MARK`]): the request is then a [`Template`] split around it,
//! and each send writes a number there (`PUT /Dog/{n}` writes distinct ids), without allocating.
//!
//! [`Requests`] mixes a second request in at a fixed share (`--mix 10:PUT:/Dog/{n}` for 90/10
//! reads and writes), chosen per request number so the share holds on every connection.

/// Where a path takes the per-request number.
pub const NUMBER_MARK: &str = "{n}";

/// The request bytes, split around the path's `{n}` when it has one.
#[derive(Debug, Clone)]
pub struct Template {
    head: Vec<u8>,
    /// The bytes after `{n}`; `None` when the path has no `{n}` and every request is `head`.
    tail: Option<Vec<u8>>,
}

impl Template {
    /// Builds the request and splits it at the first `{n}` of `path` (the start line comes first,
    /// so the mark's offset in the bytes is known).
    pub fn new(
        method: &str,
        path: &str,
        host: &str,
        headers: &[String],
        auth: Option<&str>,
        body: &[u8],
    ) -> Template {
        let bytes = build(method, path, host, headers, auth, body);
        match path.find(NUMBER_MARK) {
            Some(at) => {
                let split = method.len() + 1 + at;
                Template {
                    head: bytes[..split].to_vec(),
                    tail: Some(bytes[split + NUMBER_MARK.len()..].to_vec()),
                }
            }
            None => Template {
                head: bytes,
                tail: None,
            },
        }
    }

    /// Bytes one request takes at most (a number is at most 20 digits).
    pub fn len_max(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, |t| 20 + t.len())
    }

    /// Appends one request, with `n` in place of `{n}`.
    pub fn write(&self, n: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        if let Some(tail) = &self.tail {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut rest = n;
            loop {
                at -= 1;
                digits[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            out.extend_from_slice(&digits[at..]);
            out.extend_from_slice(tail);
        }
    }
}

/// The requests of one run: the main one and, with `--mix`, another sent for `percent` of the
/// request numbers.
#[derive(Debug, Clone)]
pub struct Requests {
    main: Template,
    mix: Option<(Template, u8)>,
}

impl Requests {
    pub fn new(main: Template, mix: Option<(Template, u8)>) -> Requests {
        Requests { main, mix }
    }

    /// Bytes one request takes at most, whichever is picked.
    pub fn len_max(&self) -> usize {
        let mix = self.mix.as_ref().map_or(0, |(t, _)| t.len_max());
        self.main.len_max().max(mix)
    }

    /// Appends the request that number `n` picks, with `n` in place of `{n}`.
    pub fn write(&self, n: u64, out: &mut Vec<u8>) {
        match &self.mix {
            Some((other, percent)) if picks(n, *percent) => other.write(n, out),
            _ => self.main.write(n, out),
        }
    }
}

/// Whether request number `n` takes the mixed-in request. The numbers of one connection are an
/// arithmetic sequence (`c + k * connections`); `n % 100` would give some connections none and
/// others a multiple, so a multiplicative (Fibonacci) hash spreads them first and its top 32 bits
/// are scaled to 0..100.
fn picks(n: u64, percent: u8) -> bool {
    let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (spread * 100) >> 32 < u64::from(percent)
}

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
pub fn base64(input: &[u8]) -> String {
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

    fn check_template(path: &str, numbers: &[u64], expected: &str) {
        let template = Template::new("PUT", path, "h:1", &[], None, b"{}");
        let mut out = Vec::new();
        for n in numbers {
            template.write(*n, &mut out);
        }
        assert_eq!(String::from_utf8_lossy(&out), expected);
        assert!(out.len() <= template.len_max() * numbers.len());
    }

    #[test]
    fn templates() {
        let put = |path: &str| {
            format!("PUT {path} HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n\r\n{{}}")
        };
        check_template(
            "/Dog/{n}",
            &[0, 7, 1234567890],
            &(put("/Dog/0") + &put("/Dog/7") + &put("/Dog/1234567890")),
        );
        check_template(
            "/Dog/{n}/x?{n}",
            &[u64::MAX],
            &put("/Dog/18446744073709551615/x?{n}"),
        );
        check_template("/Dog/1", &[5, 6], &(put("/Dog/1") + &put("/Dog/1")));
    }

    /// The share of `count` numbers of one connection (`first`, `first + stride`, ...) that
    /// take the mixed-in request at `percent`, in percent.
    fn check_mix(percent: u8, first: u64, stride: u64, expected_low: f64, expected_high: f64) {
        let count = 10_000u64;
        let picked = (0..count)
            .filter(|k| picks(first + k * stride, percent))
            .count();
        let share = picked as f64 * 100.0 / count as f64;
        assert!(
            (expected_low..=expected_high).contains(&share),
            "{percent}% stride {stride} from {first}: {share}%"
        );
    }

    #[test]
    fn mix_shares() {
        check_mix(10, 0, 1, 9.0, 11.0);
        check_mix(10, 3, 64, 9.0, 11.0);
        check_mix(10, 0, 10, 9.0, 11.0);
        check_mix(10, 7, 1000, 9.0, 11.0);
        check_mix(50, 1, 2, 48.0, 52.0);
        check_mix(0, 0, 1, 0.0, 0.0);
        check_mix(100, 0, 1, 100.0, 100.0);
    }

    #[test]
    fn mixed_requests() {
        let get = Template::new("GET", "/Dog/{n}", "h:1", &[], None, b"");
        let put = Template::new("PUT", "/Dog/{n}", "h:1", &[], None, b"{}");
        let requests = Requests::new(get, Some((put, 10)));
        let mut out = Vec::new();
        let mut puts = 0;
        for n in 0..1000 {
            out.clear();
            requests.write(n, &mut out);
            assert!(out.len() <= requests.len_max());
            let text = String::from_utf8_lossy(&out);
            if text.starts_with(&format!("PUT /Dog/{n} ")) {
                puts += 1;
            } else {
                assert!(text.starts_with(&format!("GET /Dog/{n} ")), "{text}");
            }
        }
        assert!((80..=120).contains(&puts), "{puts} PUTs of 1000");
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
