//! A small blocking HTTP/1.1 `GET` for `csv_url_load`, called on the load's job thread (never on
//! an executor): plain `http://` only, one request per connection, no redirects, the response
//! head and body bounded, and a timeout on connecting and on every read and write.
//!
//! ```text
//! GET <path> HTTP/1.1            200 OK
//! Host: <authority>       →      Content-Length: n | Transfer-Encoding: chunked | (to close)
//! Connection: close
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The response's status line and headers.
pub const HEAD_BYTES_MAX: usize = 64 << 10;
/// Headers in the response head.
pub const HEADERS_MAX: usize = 64;
/// A chunk-size line of a chunked body.
pub const CHUNK_LINE_BYTES_MAX: u64 = 1024;
/// Connecting, and each read or write after it.
pub const TIMEOUT_MS: u64 = 30_000;

/// The host, port and request target of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target<'a> {
    authority: &'a str,
    host: &'a str,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target<'_>, String> {
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => url.get(7..).unwrap_or(""),
        _ => return Err("only http:// URLs can be fetched".into()),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // The fragment never goes on the wire.
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the URL's path may not contain spaces or control characters".into());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "the URL's IPv6 address lacks its ']'".to_string())?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("the URL's port '{p}' is not a port number"))?,
    };
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(Target {
        authority,
        host,
        port,
        path,
    })
}

/// Fetches `url` and returns its body, at most `body_bytes_max` bytes; anything but a 2xx answer
/// is an error naming the status.
pub fn get(url: &str, body_bytes_max: usize) -> Result<Vec<u8>, String> {
    let target = parse_url(url)?;
    let mut stream = connect(&target)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tidepool\r\nAccept: text/csv, */*\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let head = read_head(&mut stream, &mut buf)?;
    let early = buf.split_off(head.len.min(buf.len()));
    let mut body_in = BufReader::new(std::io::Cursor::new(early).chain(stream));
    let mut body = Vec::new();
    if head.chunked {
        read_chunked(&mut body_in, &mut body, body_bytes_max)?;
    } else if let Some(length) = head.length {
        if length > body_bytes_max as u64 {
            return Err(too_large(body_bytes_max));
        }
        body.resize(length as usize, 0);
        body_in.read_exact(&mut body).map_err(io)?;
    } else {
        body_in
            .take(body_bytes_max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() > body_bytes_max {
            return Err(too_large(body_bytes_max));
        }
    }
    Ok(body)
}

fn too_large(body_bytes_max: usize) -> String {
    format!("the body is larger than {body_bytes_max} bytes")
}

fn io(e: std::io::Error) -> String {
    format!("reading the response: {e}")
}

/// A connection to the first of the host's addresses that answers, with the timeouts set.
fn connect(target: &Target<'_>) -> Result<TcpStream, String> {
    let timeout = Duration::from_millis(TIMEOUT_MS);
    let addrs = (target.host, target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{}': {e}", target.host))?;
    let mut last = format!("'{}' has no address", target.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(stream)
}

/// What the response head says of the body.
struct Head {
    /// Bytes of the head in the buffer (the body's first bytes follow).
    len: usize,
    length: Option<u64>,
    chunked: bool,
}

/// Reads into `buf` until the head parses whole, within [`HEAD_BYTES_MAX`]; a status other
/// than 2xx is an error.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err("the server closed the connection before answering".into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => return head_of(&response, len),
            Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => continue,
            Ok(httparse::Status::Partial) => {
                return Err(format!(
                    "the response head is larger than {HEAD_BYTES_MAX} bytes"
                ))
            }
            Err(e) => return Err(format!("invalid response head: {e}")),
        }
    }
}

fn head_of(response: &httparse::Response<'_, '_>, len: usize) -> Result<Head, String> {
    let code = response.code.unwrap_or(0);
    if !(200..300).contains(&code) {
        return Err(format!(
            "the server answered {code} {}",
            response.reason.unwrap_or("")
        ));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = match header("content-length") {
        Some(v) if !chunked => Some(
            v.parse::<u64>()
                .map_err(|_| format!("invalid Content-Length '{v}'"))?,
        ),
        _ => None,
    };
    Ok(Head {
        len,
        length,
        chunked,
    })
}

/// A chunked body into `body`, at most `body_bytes_max` bytes.
fn read_chunked(
    body_in: &mut impl BufRead,
    body: &mut Vec<u8>,
    body_bytes_max: usize,
) -> Result<(), String> {
    loop {
        let mut line = Vec::new();
        (&mut *body_in)
            .take(CHUNK_LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("invalid chunk size '{size_text}'"))?;
        if size == 0 {
            return Ok(());
        }
        if body.len().saturating_add(size) > body_bytes_max {
            return Err(too_large(body_bytes_max));
        }
        let start = body.len();
        body.resize(start + size, 0);
        body_in
            .read_exact(body.get_mut(start..).unwrap_or_default())
            .map_err(io)?;
        let mut crlf = Vec::new();
        (&mut *body_in)
            .take(2)
            .read_until(b'\n', &mut crlf)
            .map_err(io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Result<(&str, u16, &str), &str>) {
        let got = parse_url(url).map(|t| (t.host.to_string(), t.port, t.path));
        match (got, expected) {
            (Ok((host, port, path)), Ok((h, p, pa))) => {
                assert_eq!((host.as_str(), port, path.as_str()), (h, p, pa), "{url}")
            }
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{url}: {e}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn urls() {
        check("http://a.b/x.csv", Ok(("a.b", 80, "/x.csv")));
        check("HTTP://a:8080", Ok(("a", 8080, "/")));
        check(
            "http://127.0.0.1:9/d?x=1#frag",
            Ok(("127.0.0.1", 9, "/d?x=1")),
        );
        check("http://h?q", Ok(("h", 80, "/?q")));
        check("http://[::1]:81/p", Ok(("::1", 81, "/p")));
        check("https://a/x", Err("only http://"));
        check("http://a:99999/", Err("not a port number"));
        check("http:///x", Err("no host"));
        check("http://u:p@a/", Err("credentials"));
        check("http://a/x y", Err("spaces"));
        check("http://a/x\r\nHost: b", Err("control"));
    }
}
