//! Request framing: check that a whole head (and body) is in the buffer before anything is handed on.
//!
//! ```text
//! request  = method SP target SP "HTTP/1." digit CRLF *(header CRLF) CRLF [ body ]
//! body     = Content-Length octets | chunked: *(hex-size [;ext] CRLF data CRLF) "0" CRLF *(trailer CRLF) CRLF
//! ```

/// Upper bound on header lines httparse is given room for; `http.maxHeaderCount` may only lower it.
pub const HEADER_SLOTS: usize = 128;

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
