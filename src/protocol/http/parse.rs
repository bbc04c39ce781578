//! Request framing: check that a whole head (and body) is in the buffer before anything is handed on.
//!
//! ```text
//! request  = method SP target SP "HTTP/1." digit CRLF *(header CRLF) CRLF [ body ]
//! body     = Content-Length octets | chunked: *(hex-size [;ext] CRLF data CRLF) "0" CRLF *(trailer CRLF) CRLF
//! ```

/// Upper bound on header lines httparse is given room for; `http.maxHeaderCount` may only lower it.
pub const HEADER_SLOTS: usize = 128;

/// Room for a request's headers, left uninitialised: httparse writes only the slots a request
/// uses, so a request does not pay for zeroing all 128 (4 KiB) first.
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; HEADER_SLOTS];

pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; HEADER_SLOTS]
}

/// Why a request cannot be served; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed request line, header or chunk framing → 400.
    BadRequest(&'static str),
    /// Head larger than `http.maxHeaderSize`, or more header lines than allowed → 431.
    HeadTooLarge,
    /// Body larger than `http.maxBodySize` → 413.
    BodyTooLarge,
    /// Transfer-Encoding other than chunked → 501.
    UnsupportedEncoding,
}

impl ParseError {
    pub fn status(self) -> u16 {
        match self {
            ParseError::BadRequest(_) => 400,
            ParseError::HeadTooLarge => 431,
            ParseError::BodyTooLarge => 413,
            ParseError::UnsupportedEncoding => 501,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ParseError::BadRequest(why) => why,
            ParseError::HeadTooLarge => {
                "Request header fields too large (http.maxHeaderSize / http.maxHeaderCount)"
            }
            ParseError::BodyTooLarge => "Request body too large (http.maxBodySize)",
            ParseError::UnsupportedEncoding => "Transfer-Encoding not supported (only chunked)",
        }
    }
}

/// How the body of a parsed head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Result of decoding a chunked body from the bytes after the head.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunked {
    /// The body is complete: `consumed` bytes of input were used, the data was appended to `out`.
    Complete {
        consumed: usize,
    },
    Incomplete,
}

fn parse_hex(line: &[u8]) -> Result<u64, ParseError> {
    let digits = match memchr::memchr(b';', line) {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = trim(digits);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ParseError::BadRequest("Invalid chunk size"));
    }
    let mut n: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(ParseError::BadRequest("Invalid chunk size")),
        };
        n = (n << 4) | d as u64;
    }
    Ok(n)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Decodes a whole chunked body from `input` into `out` (cleared first), or says more is needed.
/// `body_bytes_max` bounds the decoded size; `input_bytes_max` bounds framing overhead too.
pub fn decode_chunked(
    input: &[u8],
    out: &mut Vec<u8>,
    body_bytes_max: u64,
) -> Result<Chunked, ParseError> {
    out.clear();
    let mut pos = 0usize;
    loop {
        let Some(eol) = memchr::memchr(b'\n', &input[pos..]) else {
            // A size line longer than any sane one is hostile, not incomplete.
            if input.len() - pos > 1024 {
                return Err(ParseError::BadRequest("Chunk size line too long"));
            }
            return Ok(Chunked::Incomplete);
        };
        let line = &input[pos..pos + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let size = parse_hex(line)?;
        pos += eol + 1;
        if size == 0 {
            // Trailers: lines until an empty one.
            loop {
                let Some(eol) = memchr::memchr(b'\n', &input[pos..]) else {
                    if input.len() - pos > 8192 {
                        return Err(ParseError::BadRequest("Chunked trailer too long"));
                    }
                    return Ok(Chunked::Incomplete);
                };
                let line = &input[pos..pos + eol];
                pos += eol + 1;
                if line.is_empty() || line == b"\r" {
                    return Ok(Chunked::Complete { consumed: pos });
                }
            }
        }
        if out.len() as u64 + size > body_bytes_max {
            return Err(ParseError::BodyTooLarge);
        }
        let size = size as usize;
        if input.len() - pos < size + 2 {
            return Ok(Chunked::Incomplete);
        }
        out.extend_from_slice(&input[pos..pos + size]);
        pos += size;
        match &input[pos..pos + 2] {
            b"\r\n" => pos += 2,
            _ => return Err(ParseError::BadRequest("Chunk data not followed by CRLF")),
        }
    }
}

/// Where a complete request's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLocation {
    /// `input[start..end]`.
    Inline { start: usize, end: usize },
    /// Chunked: decoded into the caller's body buffer.
    Decoded,
}

/// A complete request found at the start of the input.
#[derive(Debug)]
pub struct Framed<'b, 'h> {
    pub head: Head<'b, 'h>,
    pub body: BodyLocation,
    /// Bytes of input the request used, head and body.
    pub consumed: usize,
}

#[derive(Debug)]
pub enum Frame<'b, 'h> {
    Complete(Framed<'b, 'h>),
    /// The head is not complete yet.
    NeedHead,
    /// The head is complete; the body is not. `missing` is known for Content-Length bodies.
    /// `head` is the parsed head, so the request can be judged before its body is read.
    NeedBody {
        missing: Option<usize>,
        head: Head<'b, 'h>,
    },
}

/// The parsed head of a request.
#[derive(Debug)]
pub struct Head<'b, 'h> {
    pub method: &'b str,
    pub target: &'b str,
    pub version_minor: u8,
    pub headers: &'h [httparse::Header<'b>],
}

/// Check, then parse: finds one whole request at the start of `input`, within `limits`.
/// `headers` comes from [`header_slots`]; `body_buf` receives a chunked body.
pub fn frame<'b, 'h>(
    input: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    limits: &super::Limits,
    body_buf: &mut Vec<u8>,
) -> Result<Frame<'b, 'h>, ParseError> {
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(input, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if input.len() > limits.header_bytes_max {
                return Err(ParseError::HeadTooLarge);
            }
            return Ok(Frame::NeedHead);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
        Err(_) => return Err(ParseError::BadRequest("Malformed HTTP request")),
    };
    let headers: &'h [httparse::Header<'b>] = parsed.headers;
    if head_len > limits.header_bytes_max || headers.len() > limits.header_count_max {
        return Err(ParseError::HeadTooLarge);
    }
    let head = Head {
        method: parsed.method.unwrap_or(""),
        target: parsed.path.unwrap_or("/"),
        version_minor: parsed.version.unwrap_or(1),
        headers,
    };
    let (body, consumed) = match body_framing(headers)? {
        BodyFraming::None => (
            BodyLocation::Inline {
                start: head_len,
                end: head_len,
            },
            head_len,
        ),
        BodyFraming::Length(n) if n > limits.body_bytes_max => {
            return Err(ParseError::BodyTooLarge)
        }
        BodyFraming::Length(n) => {
            let n = n as usize;
            let have = input.len() - head_len;
            if have < n {
                return Ok(Frame::NeedBody {
                    missing: Some(n - have),
                    head,
                });
            }
            (
                BodyLocation::Inline {
                    start: head_len,
                    end: head_len + n,
                },
                head_len + n,
            )
        }
        BodyFraming::Chunked => {
            match decode_chunked(&input[head_len..], body_buf, limits.body_bytes_max)? {
                Chunked::Complete { consumed } => (BodyLocation::Decoded, head_len + consumed),
                Chunked::Incomplete => {
                    return Ok(Frame::NeedBody {
                        missing: None,
                        head,
                    })
                }
            }
        }
    };
    Ok(Frame::Complete(Framed {
        head,
        body,
        consumed,
    }))
}

pub fn header_eq(name: &str, expected: &str) -> bool {
    name.eq_ignore_ascii_case(expected)
}

/// Finds the framing from the headers of a parsed head.
pub fn body_framing(headers: &[httparse::Header<'_>]) -> Result<BodyFraming, ParseError> {
    let mut framing = BodyFraming::None;
    let mut seen_length = false;
    for h in headers {
        if header_eq(h.name, "content-length") {
            let text = std::str::from_utf8(h.value)
                .map_err(|_| ParseError::BadRequest("Invalid Content-Length"))?;
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadRequest("Invalid Content-Length"));
            }
            let n: u64 = text
                .parse()
                .map_err(|_| ParseError::BadRequest("Invalid Content-Length"))?;
            if seen_length && framing != BodyFraming::Length(n) {
                return Err(ParseError::BadRequest("Conflicting Content-Length headers"));
            }
            seen_length = true;
            if framing != BodyFraming::Chunked {
                framing = BodyFraming::Length(n);
            }
        } else if header_eq(h.name, "transfer-encoding") {
            let value = trim(h.value);
            if value.eq_ignore_ascii_case(b"chunked") {
                framing = BodyFraming::Chunked;
            } else if !value.eq_ignore_ascii_case(b"identity") {
                return Err(ParseError::UnsupportedEncoding);
            }
        }
    }
    // Both framings at once is a request-smuggling vector (RFC 9112 §6.1): refuse.
    if seen_length && framing == BodyFraming::Chunked {
        return Err(ParseError::BadRequest(
            "Both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(framing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_chunked(input: &[u8], expected: Result<Option<&[u8]>, ParseError>) {
        let mut out = Vec::new();
        let got = decode_chunked(input, &mut out, 1 << 20).map(|c| match c {
            Chunked::Complete { consumed } => {
                assert_eq!(consumed, input.len(), "consumed all of {input:?}");
                Some(out.clone())
            }
            Chunked::Incomplete => None,
        });
        assert_eq!(
            got,
            expected.map(|o| o.map(|b| b.to_vec())),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn chunked_bodies() {
        check_chunked(b"5\r\nhello\r\n0\r\n\r\n", Ok(Some(b"hello")));
        check_chunked(
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            Ok(Some(b"hello world")),
        );
        check_chunked(b"A\r\n0123456789\r\n0\r\n\r\n", Ok(Some(b"0123456789")));
        check_chunked(b"5\r\nhel", Ok(None));
        check_chunked(b"5\r\nhello\r\n0\r\n", Ok(None));
        check_chunked(
            b"zz\r\nhello\r\n",
            Err(ParseError::BadRequest("Invalid chunk size")),
        );
        check_chunked(
            b"5\r\nhelloXX0\r\n\r\n",
            Err(ParseError::BadRequest("Chunk data not followed by CRLF")),
        );
        check_chunked(b"fffffffffffffff\r\n", Err(ParseError::BodyTooLarge));
        // Every split point of a valid body is either incomplete or the whole body.
        let whole = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for cut in 0..whole.len() {
            let mut out = Vec::new();
            assert_eq!(
                decode_chunked(&whole[..cut], &mut out, 1 << 20),
                Ok(Chunked::Incomplete),
                "cut {cut}"
            );
        }
    }

    fn limits() -> crate::protocol::http::Limits {
        crate::protocol::http::Limits {
            header_bytes_max: 200,
            header_count_max: 4,
            body_bytes_max: 16,
            ..Default::default()
        }
    }

    /// Frames `input` whole and at every split point: a prefix is never complete, the whole is
    /// `expected` (method, target, body, consumed) or the error.
    fn check_frame(input: &[u8], expected: Result<(&str, &str, &[u8], usize), ParseError>) {
        let limits = limits();
        let mut body_buf = Vec::new();
        let mut headers = header_slots();
        let got = frame(input, &mut headers, &limits, &mut body_buf).map(|f| match f {
            Frame::Complete(fr) => {
                let body = match fr.body {
                    BodyLocation::Inline { start, end } => input[start..end].to_vec(),
                    BodyLocation::Decoded => body_buf.clone(),
                };
                Some((
                    fr.head.method.to_string(),
                    fr.head.target.to_string(),
                    body,
                    fr.consumed,
                ))
            }
            _ => None,
        });
        let expected =
            expected.map(|(m, t, b, c)| Some((m.to_string(), t.to_string(), b.to_vec(), c)));
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
        if let Ok(Some((_, _, _, consumed))) = &got {
            for cut in 0..*consumed {
                let mut headers = header_slots();
                let partial = frame(&input[..cut], &mut headers, &limits, &mut body_buf);
                assert!(
                    matches!(partial, Ok(Frame::NeedHead | Frame::NeedBody { .. })),
                    "cut {cut}: {partial:?}"
                );
            }
        }
    }

    #[test]
    fn frames() {
        check_frame(
            b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n",
            Ok(("GET", "/a?b", b"", 30)),
        );
        check_frame(
            b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET",
            Ok(("PUT", "/x", b"abc", 41)),
        );
        check_frame(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            Ok(("POST", "/", b"ab", 59)),
        );
        check_frame(
            b"PUT /x HTTP/1.1\r\nContent-Length: 17\r\n\r\n",
            Err(ParseError::BodyTooLarge),
        );
        check_frame(
            b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n",
            Err(ParseError::HeadTooLarge),
        );
        check_frame(&[b'a'; 201], Err(ParseError::HeadTooLarge));
        check_frame(
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            Err(ParseError::BadRequest("Malformed HTTP request")),
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        check_frame(long.as_bytes(), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn framing() {
        let h = |n: &'static str, v: &'static [u8]| httparse::Header { name: n, value: v };
        assert_eq!(
            body_framing(&[h("Content-Length", b"12")]),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            body_framing(&[h("transfer-encoding", b"chunked")]),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(body_framing(&[]), Ok(BodyFraming::None));
        assert!(body_framing(&[h("Content-Length", b"-1")]).is_err());
        assert!(body_framing(&[h("Content-Length", b"1"), h("Content-Length", b"2")]).is_err());
        assert!(body_framing(&[
            h("Content-Length", b"1"),
            h("Transfer-Encoding", b"chunked")
        ])
        .is_err());
        assert_eq!(
            body_framing(&[h("Transfer-Encoding", b"gzip")]),
            Err(ParseError::UnsupportedEncoding)
        );
    }
}
