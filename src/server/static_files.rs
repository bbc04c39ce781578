//! Static files of the application (`static` in config.yaml, docs/applications.md), loaded into memory at
//! start so serving one never blocks a core on file I/O. Exports win over static files; static
//! files need no authentication and get a `Content-Type` by extension, an `ETag`, 304 and ranges.

use std::collections::HashMap;
use std::path::Path;

use crate::protocol::http::{Method, Request, Response};
use crate::schema::{expand_globs, App};

/// Total bytes of static files kept in memory; files past it are skipped with a warning.
pub const STATIC_BYTES_MAX: usize = 256 << 20;

struct File {
    body: Vec<u8>,
    content_type: &'static str,
    etag: String,
}

pub struct StaticFiles {
    files: HashMap<String, File>,
    index: bool,
    extensions: Vec<String>,
    fallthrough: bool,
    not_found: Option<String>,
}

fn content_type(path: &str) -> &'static str {
    match path
        .rsplit('.')
        .next()
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The literal folder a glob starts from: `web/**` → `web`, `*.html` → ``.
fn glob_base(pattern: &str) -> String {
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal: Vec<&str> = parts
        .iter()
        .take(parts.len().saturating_sub(1))
        .take_while(|p| !p.contains(['*', '?', '[']))
        .copied()
        .collect();
    literal.join("/")
}

impl StaticFiles {
    /// Loads the files the app's `static` option names. `None` when the app serves none.
    pub fn load(app: &App) -> Option<StaticFiles> {
        let config = app.config.static_files.as_ref()?;
        let url_path = config.url_path.clone().unwrap_or_default();
        let url_prefix = url_path.trim_matches('/');
        let mut files = HashMap::new();
        let mut total = 0usize;
        for pattern in &config.files {
            let base = glob_base(pattern);
            let paths = match expand_globs(&app.dir, std::slice::from_ref(pattern)) {
                Ok(paths) => paths,
                Err(e) => {
                    tracing::warn!("static files {pattern}: {e}");
                    continue;
                }
            };
            for path in paths {
                let Ok(rel) = path.strip_prefix(app.dir.join(&base)) else {
                    continue;
                };
                let rel = rel.to_string_lossy().replace('\\', "/");
                let url = if url_prefix.is_empty() {
                    format!("/{rel}")
                } else {
                    format!("/{url_prefix}/{rel}")
                };
                match std::fs::read(&path) {
                    Ok(body) if total + body.len() <= STATIC_BYTES_MAX => {
                        total += body.len();
                        let etag = format!("\"{:x}-{:x}\"", body.len(), fnv1a(&body));
                        files.insert(
                            url,
                            File {
                                content_type: content_type(&rel),
                                etag,
                                body,
                            },
                        );
                    }
                    Ok(_) => tracing::warn!(
                        "static file {} skipped: over {STATIC_BYTES_MAX} bytes in all",
                        path.display()
                    ),
                    Err(e) => tracing::warn!("static file {}: {e}", path.display()),
                }
            }
        }
        if files.is_empty() {
            return None;
        }
        tracing::info!(
            "{} static files ({total} bytes) from {}",
            files.len(),
            app.dir.display()
        );
        Some(StaticFiles {
            files,
            index: config.index,
            extensions: config.extensions.clone(),
            fallthrough: config.fallthrough,
            not_found: config.not_found.as_ref().map(|n| {
                let n = Path::new(n).to_string_lossy().replace('\\', "/");
                if url_prefix.is_empty() {
                    format!("/{n}")
                } else {
                    format!("/{url_prefix}/{n}")
                }
            }),
        })
    }

    fn find(&self, path: &str) -> Option<&File> {
        if let Some(f) = self.files.get(path) {
            return Some(f);
        }
        if self.index {
            let dir = path.trim_end_matches('/');
            if let Some(f) = self.files.get(&format!("{dir}/index.html")) {
                return Some(f);
            }
        }
        self.extensions
            .iter()
            .find_map(|ext| self.files.get(&format!("{path}.{ext}")))
    }

    /// Serves `req` when a static file matches (or answers 404 without fallthrough). Returns
    /// false to let the caller go on.
    pub fn serve(&self, req: &Request<'_>, resp: &mut Response) -> bool {
        if !matches!(req.method, Method::Get | Method::Head) {
            return false;
        }
        let Ok(path) = crate::util::percent_decode(req.path) else {
            return false;
        };
        let Some(file) = self.find(&path) else {
            if self.fallthrough {
                return false;
            }
            match self.not_found.as_deref().and_then(|n| self.files.get(n)) {
                Some(page) => {
                    resp.status = 404;
                    resp.header("Content-Type", page.content_type);
                    resp.body.extend_from_slice(&page.body);
                }
                None => resp.text(404, "Not found"),
            }
            return true;
        };
        resp.header("Content-Type", file.content_type);
        resp.header("ETag", &file.etag);
        resp.header("Accept-Ranges", "bytes");
        let if_none_match = req.header_str("if-none-match").unwrap_or("");
        if if_none_match.split(',').any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == "*" || t == file.etag
        }) {
            resp.status = 304;
            return true;
        }
        if let Some(range) = req.header_str("range") {
            match parse_range(range, file.body.len()) {
                Some((start, end)) => {
                    resp.status = 206;
                    resp.header(
                        "Content-Range",
                        &format!("bytes {start}-{end}/{}", file.body.len()),
                    );
                    resp.body.extend_from_slice(&file.body[start..=end]);
                }
                None => {
                    resp.status = 416;
                    resp.header("Content-Range", &format!("bytes */{}", file.body.len()));
                }
            }
            return true;
        }
        resp.status = 200;
        resp.body.extend_from_slice(&file.body);
        true
    }
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `len` → inclusive (start, end).
fn parse_range(header: &str, len: usize) -> Option<(usize, usize)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: usize = n.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().ok()?, len - 1),
        (a, b) => (a.parse().ok()?, b.parse::<usize>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_bases() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=8-20", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(glob_base("web/**"), "web");
        assert_eq!(glob_base("web/a/*.html"), "web/a");
        assert_eq!(glob_base("*.html"), "");
    }
}
