//! File globs of `config.yaml`, relative to the application folder: `*` and `?` match within one
//! path segment, a `**` segment matches any number of segments. Reads directory listings only;
//! never follows symlinked directories (a loop would never end) and never leaves the folder.

use std::fs;
use std::path::{Path, PathBuf};

/// Most directory entries one expansion looks at; an app folder bigger than this is a mistake.
pub const WALK_ENTRY_COUNT_MAX: usize = 100_000;
/// Deepest folder level walked below the application folder.
pub const WALK_DEPTH_MAX: usize = 32;
/// Longest glob pattern accepted, in bytes.
pub const PATTERN_BYTES_MAX: usize = 1024;

/// Why a glob could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobError {
    /// Absolute, `..`, too long or empty: names files outside the folder or nothing at all.
    Pattern {
        pattern: String,
        reason: &'static str,
    },
    /// The folder holds more than [`WALK_ENTRY_COUNT_MAX`] entries.
    TooManyEntries {
        dir: PathBuf,
    },
    Io {
        path: PathBuf,
        message: String,
    },
}

impl std::fmt::Display for GlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GlobError::Pattern { pattern, reason } => write!(f, "glob {pattern:?}: {reason}"),
            GlobError::TooManyEntries { dir } => {
                write!(
                    f,
                    "{}: more than {WALK_ENTRY_COUNT_MAX} entries",
                    dir.display()
                )
            }
            GlobError::Io { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for GlobError {}

/// Checks a pattern: relative, inside the folder, bounded.
pub fn check_pattern(pattern: &str) -> Result<(), GlobError> {
    let reason = if pattern.is_empty() {
        "is empty"
    } else if pattern.len() > PATTERN_BYTES_MAX {
        "is too long"
    } else if pattern.starts_with('/') {
        "must be relative to the application folder"
    } else if pattern.split('/').any(|segment| segment == "..") {
        "must not leave the application folder"
    } else {
        return Ok(());
    };
    Err(GlobError::Pattern {
        pattern: pattern.to_string(),
        reason,
    })
}

/// True when `path` (segments joined by `/`, relative to the folder) matches `pattern`.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Greedy matching with one backtrack point, over segments with `**` as the wildcard; the
    // same shape as the character-level matcher below, so neither can go exponential.
    let (mut p, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pattern.get(p) {
            Some(&"**") => {
                star = Some((p, s));
                p += 1;
            }
            Some(segment)
                if path
                    .get(s)
                    .is_some_and(|name| segment_matches(segment, name)) =>
            {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((star_p, star_s)) => {
                    p = star_p + 1;
                    s = star_s + 1;
                    star = Some((star_p, star_s + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|segment| *segment == "**")
}

/// True when files below the folder `dir` (relative, `/`-joined) could match `pattern`, so the
/// walk skips folders no pattern reaches.
fn could_contain(pattern: &str, dir: &str) -> bool {
    let mut pattern = pattern.split('/').filter(|s| !s.is_empty() && *s != ".");
    for name in dir.split('/').filter(|s| !s.is_empty()) {
        match pattern.next() {
            Some("**") => return true,
            Some(segment) if segment_matches(segment, name) => {}
            _ => return false,
        }
    }
    pattern.next().is_some()
}

/// `*` and `?` within one segment.
fn segment_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, s));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == name.get(s) => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((star_p, star_s)) => {
                    p = star_p + 1;
                    s = star_s + 1;
                    star = Some((star_p, star_s + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == '*')
}

/// The regular files under `dir` matching any of `patterns`, sorted, each once.
pub fn expand_globs(dir: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, GlobError> {
    for pattern in patterns {
        check_pattern(pattern)?;
    }
    let mut found = Vec::new();
    let mut entry_count = 0;
    walk(dir, "", 0, patterns, &mut entry_count, &mut found)?;
    found.sort();
    found.dedup();
    Ok(found
        .into_iter()
        .map(|relative| dir.join(relative))
        .collect())
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    patterns: &[String],
    entry_count: &mut usize,
    found: &mut Vec<String>,
) -> Result<(), GlobError> {
    let here = dir.join(prefix);
    let io = |path: &Path, error: std::io::Error| GlobError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let entries = fs::read_dir(&here).map_err(|e| io(&here, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(&here, e))?;
        *entry_count += 1;
        if *entry_count > WALK_ENTRY_COUNT_MAX {
            return Err(GlobError::TooManyEntries {
                dir: dir.to_path_buf(),
            });
        }
        // Names that are not UTF-8 cannot match a UTF-8 pattern.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type().map_err(|e| io(&entry.path(), e))?;
        if file_type.is_dir() {
            let wanted = patterns
                .iter()
                .any(|pattern| could_contain(pattern, &relative));
            if wanted && depth < WALK_DEPTH_MAX {
                walk(dir, &relative, depth + 1, patterns, entry_count, found)?;
            }
        } else if (file_type.is_file() || (file_type.is_symlink() && entry.path().is_file()))
            && patterns
                .iter()
                .any(|pattern| glob_matches(pattern, &relative))
        {
            found.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, path: &str, expected: bool) {
        assert_eq!(
            glob_matches(pattern, path),
            expected,
            "pattern {pattern:?} on {path:?}"
        );
    }

    #[test]
    fn matching() {
        let cases = [
            ("*.graphql", "schema.graphql", true),
            ("*.graphql", "a/schema.graphql", false),
            ("*.graphql", "schema.graphqls", false),
            ("schema.graphql", "schema.graphql", true),
            ("./schema.graphql", "schema.graphql", true),
            ("s?hema.graphql", "schema.graphql", true),
            ("s?hema.graphql", "shema.graphql", false),
            ("web/**", "web/index.html", true),
            ("web/**", "web/a/b/c.css", true),
            ("web/**", "webx/a.css", false),
            ("web/**", "index.html", false),
            ("**/*.graphql", "schema.graphql", true),
            ("**/*.graphql", "a/b/schema.graphql", true),
            ("a/**/z.txt", "a/z.txt", true),
            ("a/**/z.txt", "a/b/c/z.txt", true),
            ("a/**/z.txt", "a/b/c/y.txt", false),
            ("*", "a", true),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("***", "anything", true),
            ("a/*", "a", false),
            ("**", "a/b", true),
            (
                "*****************x",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaay",
                false,
            ),
        ];
        for (pattern, path, expected) in cases {
            check(pattern, path, expected);
        }
    }

    #[test]
    fn pruning() {
        let cases = [
            ("web/**", "web", true),
            ("web/**", "web/a/b", true),
            ("web/**", "node_modules", false),
            ("*.graphql", "a", false),
            ("*/schema.graphql", "a", true),
            ("*/schema.graphql", "a/b", false),
            ("**/x", "deep/er", true),
        ];
        for (pattern, dir, expected) in cases {
            assert_eq!(could_contain(pattern, dir), expected, "{pattern:?} {dir:?}");
        }
    }

    #[test]
    fn patterns() {
        for (pattern, ok) in [
            ("a/*.graphql", true),
            ("", false),
            ("/etc/*", false),
            ("../x", false),
            ("a/../b", false),
        ] {
            assert_eq!(check_pattern(pattern).is_ok(), ok, "{pattern:?}");
        }
    }
}
