//! Topic filters (docs/mqtt.md SUBSCRIBE): `<export>` or `<export>/<levels>`, a level literal, `+`
//! (one level) or `#` (last only: this level and below). Parsed once; matching trusts the type.

use std::fmt;

/// Levels after the export name this parser accepts; deeper filters are refused, so matching
/// work per event stays bounded.
pub const LEVELS_MAX: usize = 32;
/// Bytes of a whole filter.
pub const FILTER_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Literal(String),
    /// `+`: exactly one level.
    One,
    /// `#`: this level and every level below, including none.
    Rest,
}

/// A validated topic filter. `T` alone matches messages to the bare table topic; `T/#` matches
/// every record of T and those messages; `T/x` the record `x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    export: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    Empty,
    TooLong,
    TooDeep,
    /// The export level is a wildcard or empty.
    BadExport,
    /// `#` not last, or `+`/`#` inside a level.
    BadWildcard,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterError::Empty => "empty topic filter",
            FilterError::TooLong => "topic filter longer than 1024 bytes",
            FilterError::TooDeep => "topic filter deeper than 32 levels",
            FilterError::BadExport => "a topic filter starts with a literal export name",
            FilterError::BadWildcard => {
                "'#' must be the last level and '+'/'#' must fill a whole level"
            }
        })
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    pub fn parse(raw: &str) -> Result<Filter, FilterError> {
        if raw.is_empty() {
            return Err(FilterError::Empty);
        }
        if raw.len() > FILTER_BYTES_MAX {
            return Err(FilterError::TooLong);
        }
        let mut parts = raw.split('/');
        let export = parts.next().unwrap_or_default();
        if export.is_empty() || export.contains(['+', '#']) {
            return Err(FilterError::BadExport);
        }
        let mut levels = Vec::new();
        for part in parts {
            if levels.len() == LEVELS_MAX {
                return Err(FilterError::TooDeep);
            }
            if matches!(levels.last(), Some(Level::Rest)) {
                return Err(FilterError::BadWildcard);
            }
            levels.push(match part {
                "+" => Level::One,
                "#" => Level::Rest,
                p if p.contains(['+', '#']) => return Err(FilterError::BadWildcard),
                p => Level::Literal(p.to_string()),
            });
        }
        Ok(Filter {
            export: export.to_string(),
            levels,
        })
    }

    /// The filter for one record id (ids with `/` name a hierarchy).
    pub fn record(export: &str, id: &str) -> Filter {
        let mut levels: Vec<Level> = id.split('/').map(|l| Level::Literal(l.into())).collect();
        levels.truncate(LEVELS_MAX);
        Filter {
            export: export.to_string(),
            levels,
        }
    }

    /// `T/#`, or `T/<prefix>/#` for a record and its descendants.
    pub fn below(export: &str, prefix: Option<&str>) -> Filter {
        let mut filter = match prefix {
            Some(p) => Filter::record(export, p),
            None => Filter {
                export: export.to_string(),
                levels: Vec::new(),
            },
        };
        filter.levels.truncate(LEVELS_MAX - 1);
        filter.levels.push(Level::Rest);
        filter
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The record id when this filter names exactly one record (no wildcard).
    pub fn exact_id(&self) -> Option<String> {
        if self.levels.is_empty() {
            return None;
        }
        let mut id = String::new();
        for (i, level) in self.levels.iter().enumerate() {
            let Level::Literal(l) = level else {
                return None;
            };
            if i > 0 {
                id.push('/');
            }
            id.push_str(l);
        }
        Some(id)
    }

    /// Whether an event on record `id` (None: the bare table topic) of this export matches.
    pub fn matches(&self, id: Option<&str>) -> bool {
        let Some(id) = id else {
            return self.levels.is_empty() || self.levels == [Level::Rest];
        };
        let mut parts = id.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        // Every level matched; the id must have no levels left, and a bare filter takes no ids.
        !self.levels.is_empty() && parts.next().is_none()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.export)?;
        for level in &self.levels {
            f.write_str("/")?;
            match level {
                Level::Literal(l) => f.write_str(l)?,
                Level::One => f.write_str("+")?,
                Level::Rest => f.write_str("#")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `filter` against ids: `Some(matching ids)` or the parse error.
    fn check(filter: &str, ids: &[Option<&str>], expected: Result<Vec<Option<&str>>, FilterError>) {
        let got = Filter::parse(filter).map(|f| {
            assert_eq!(f.to_string(), filter, "display round-trips");
            ids.iter()
                .copied()
                .filter(|id| f.matches(*id))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, expected, "filter {filter:?}");
    }

    #[test]
    fn filters_follow_spec_6_3() {
        let ids = [
            None,
            Some("x"),
            Some("y"),
            Some("x/a"),
            Some("a/temp"),
            Some("a/b/temp"),
        ];
        check("T/x", &ids, Ok(vec![Some("x")]));
        check("T/x/#", &ids, Ok(vec![Some("x"), Some("x/a")]));
        check(
            "T/#",
            &ids,
            Ok(vec![
                None,
                Some("x"),
                Some("y"),
                Some("x/a"),
                Some("a/temp"),
                Some("a/b/temp"),
            ]),
        );
        check("T/+", &ids, Ok(vec![Some("x"), Some("y")]));
        check("T/+/temp", &ids, Ok(vec![Some("a/temp")]));
        check("T", &ids, Ok(vec![None]));
        check(
            "T/v1.2",
            &[Some("v1.2"), Some("v1x2")],
            Ok(vec![Some("v1.2")]),
        );
        check("", &ids, Err(FilterError::Empty));
        check("+/x", &ids, Err(FilterError::BadExport));
        check("#", &ids, Err(FilterError::BadExport));
        check("T/#/x", &ids, Err(FilterError::BadWildcard));
        check("T/a+", &ids, Err(FilterError::BadWildcard));
        check(
            &format!("T{}", "/a".repeat(33)),
            &ids,
            Err(FilterError::TooDeep),
        );
    }

    #[test]
    fn constructors() {
        assert_eq!(Filter::record("T", "a/b").to_string(), "T/a/b");
        assert_eq!(
            Filter::record("T", "a/b").exact_id().as_deref(),
            Some("a/b")
        );
        assert_eq!(Filter::below("T", None).to_string(), "T/#");
        assert_eq!(Filter::below("T", Some("a")).to_string(), "T/a/#");
        assert_eq!(Filter::below("T", None).exact_id(), None);
    }
}
