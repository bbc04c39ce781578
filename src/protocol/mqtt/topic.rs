//! MQTT topics as tidepool names them: `<export>` or `<export>/<id>`, and subscription filters
//! over them (docs/realtime.md, docs/mqtt.md).
//!
//! A [`Filter`] is validated once at SUBSCRIBE and then trusted; [`PublishTopic`] does the same for
//! inbound PUBLISH. Neither looks up exports: callers check the export name against the app.

use std::fmt;

/// Levels in one filter. Reaching it makes the filter invalid (v5 `0x8F`).
pub const FILTER_LEVELS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// Empty, a wildcard in the wrong place, or no export name first.
    Invalid(&'static str),
    /// `$share/<group>/<filter>` where shared subscriptions are off (v5 `0x9E`).
    Shared,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Invalid(m) => write!(f, "invalid topic: {m}"),
            TopicError::Shared => f.write_str("shared subscriptions are not supported"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `+`: exactly one level.
    One,
    /// `#`: this level and everything below (last only).
    Rest,
}

/// MQTT topic matching (MQTT 5 §4.7): `+` one level, `#` this level and below; a topic starting
/// with `$` is not matched by a filter starting with a wildcard (docs/operations-api.md).
pub fn general_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `topic` may be published to as a general topic: not empty, no wildcard.
pub fn general_topic_valid(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// A validated subscription filter whose first level is a literal export name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    raw: String,
    /// The group of a shared subscription (`$share/<group>/<filter>`, MQTT 5 §4.8.2).
    share: Option<String>,
    /// A filter over general topics outside tables (`mqtt.generalTopics`): plain MQTT matching
    /// of the whole topic (MQTT 5 §4.7), `export` empty.
    general: bool,
    /// The super user's filter whose first level is a wildcard (`#`, `+/1`): plain MQTT matching
    /// of every export's topics, and of general topics when those are on (docs/mqtt.md).
    every: bool,
    export: String,
    /// The levels after the export.
    levels: Vec<Segment>,
}

impl Filter {
    pub fn parse(raw: &str) -> Result<Filter, TopicError> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, inner) = rest.split_once('/').unwrap_or((rest, ""));
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(TopicError::Invalid(
                    "a share name must be a non-empty literal",
                ));
            }
            let mut filter = Filter::parse(inner)?;
            filter.raw = raw.to_string();
            filter.share = Some(group.to_string());
            return Ok(filter);
        }
        if raw.is_empty() {
            return Err(TopicError::Invalid("empty filter"));
        }
        let mut parts = raw.split('/');
        let export = parts.next().unwrap_or_default();
        if export.is_empty() || export.contains(['+', '#']) {
            return Err(TopicError::Invalid(
                "the first level must be an export name",
            ));
        }
        let mut levels = Vec::new();
        let mut ended = false;
        for part in parts {
            if ended {
                return Err(TopicError::Invalid("'#' must be the last level"));
            }
            if levels.len() == FILTER_LEVELS_MAX {
                return Err(TopicError::Invalid("too many levels"));
            }
            levels.push(match part {
                "+" => Segment::One,
                "#" => {
                    ended = true;
                    Segment::Rest
                }
                p if p.contains(['+', '#']) => {
                    return Err(TopicError::Invalid("a wildcard inside a level"))
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        Ok(Filter {
            raw: raw.to_string(),
            share: None,
            general: false,
            every: false,
            export: export.to_string(),
            levels,
        })
    }

    /// A filter over general topics (MQTT 5 §4.7.1: `+` any one level, `#` last only, both
    /// alone in their level), optionally shared.
    pub fn parse_general(raw: &str) -> Result<Filter, TopicError> {
        Filter::parse_plain(raw, false)
    }

    /// The super user's filter over every export's topics (and general topics): valid as a
    /// general filter, its first level a wildcard.
    pub fn parse_every(raw: &str) -> Result<Filter, TopicError> {
        Filter::parse_plain(raw, true)
    }

    /// Whether a filter's first level (after any `$share/<group>/`) is `+` or `#`.
    pub fn starts_with_wildcard(raw: &str) -> bool {
        let inner = match raw.strip_prefix("$share/") {
            Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
            None => raw,
        };
        inner.starts_with(['+', '#'])
    }

    fn parse_plain(raw: &str, every: bool) -> Result<Filter, TopicError> {
        let (share, inner) = match raw.strip_prefix("$share/") {
            Some(rest) => {
                let (group, inner) = rest.split_once('/').unwrap_or((rest, ""));
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(TopicError::Invalid(
                        "a share name must be a non-empty literal",
                    ));
                }
                (Some(group.to_string()), inner)
            }
            None => (None, raw),
        };
        if inner.is_empty() {
            return Err(TopicError::Invalid("empty filter"));
        }
        let levels: Vec<&str> = inner.split('/').collect();
        if levels.len() > FILTER_LEVELS_MAX {
            return Err(TopicError::Invalid("too many levels"));
        }
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "+" => {}
                "#" if i + 1 == levels.len() => {}
                "#" => return Err(TopicError::Invalid("'#' must be the last level")),
                l if l.contains(['+', '#']) => {
                    return Err(TopicError::Invalid("a wildcard inside a level"))
                }
                _ => {}
            }
        }
        Ok(Filter {
            raw: raw.to_string(),
            share,
            general: !every,
            every,
            export: String::new(),
            levels: Vec::new(),
        })
    }

    pub fn is_general(&self) -> bool {
        self.general
    }

    /// A filter over every export (see [`Filter::parse_every`]).
    pub fn is_every(&self) -> bool {
        self.every
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    /// The share name of a shared subscription.
    pub fn share(&self) -> Option<&str> {
        self.share.as_deref()
    }

    /// The filter without its `$share/<group>/` prefix.
    pub fn topic_filter(&self) -> &str {
        match &self.share {
            Some(group) => self.raw.get(8 + group.len()..).unwrap_or_default(),
            None => &self.raw,
        }
    }

    /// The single record this filter names when it has no wildcard (`T/x` → `x`).
    pub fn exact_id(&self) -> Option<String> {
        if self.levels.is_empty() {
            return None;
        }
        let mut id = String::new();
        for (i, s) in self.levels.iter().enumerate() {
            let Segment::Literal(l) = s else { return None };
            if i > 0 {
                id.push('/');
            }
            id.push_str(l);
        }
        Some(id)
    }

    /// Whether the filter can match any record (not only bare-table messages).
    pub fn matches_records(&self) -> bool {
        self.general || self.every || !self.levels.is_empty()
    }

    /// Whether an event on `export` with record `id` (None: the bare table topic) matches.
    /// General topics come as export `""` and the whole topic as id.
    pub fn matches(&self, export: &str, id: Option<&str>) -> bool {
        if self.every {
            let topic = match (export, id) {
                ("", Some(topic)) => std::borrow::Cow::Borrowed(topic),
                (_, Some(id)) => std::borrow::Cow::Owned(format!("{export}/{id}")),
                (_, None) => std::borrow::Cow::Borrowed(export),
            };
            return general_matches(self.topic_filter(), &topic);
        }
        if export != self.export {
            return false;
        }
        if self.general {
            return id.is_some_and(|topic| general_matches(self.topic_filter(), topic));
        }
        let mut levels = self.levels.iter();
        let Some(id) = id else {
            // `T` matches `T`, and so does `T/#` (a parent matches its multi-level wildcard).
            return matches!(levels.next(), None | Some(Segment::Rest));
        };
        let mut parts = id.split('/');
        loop {
            match (levels.next(), parts.next()) {
                (Some(Segment::Rest), _) => return true,
                (None, None) => return true,
                (Some(Segment::One), Some(_)) => {}
                (Some(Segment::Literal(l)), Some(p)) if l == p => {}
                (None, Some(_)) | (Some(_), _) => return false,
            }
        }
    }
}

/// An inbound PUBLISH topic: `<export>` or `<export>/<id>`, no wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTopic<'a> {
    pub export: &'a str,
    pub id: Option<&'a str>,
}

impl<'a> PublishTopic<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, TopicError> {
        if raw.contains(['+', '#']) {
            return Err(TopicError::Invalid("wildcards in a publish topic"));
        }
        let (export, id) = match raw.split_once('/') {
            Some((e, id)) => (e, Some(id)),
            None => (raw, None),
        };
        if export.is_empty() || id == Some("") {
            return Err(TopicError::Invalid("empty level"));
        }
        Ok(PublishTopic { export, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cases`: (event topic, expected match) for `filter`.
    fn check(filter: &str, cases: &[(&str, bool)]) {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        for (topic, want) in cases {
            let t = PublishTopic::parse(topic).unwrap();
            assert_eq!(f.matches(t.export, t.id), *want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn matching() {
        check(
            "Dog/1",
            &[
                ("Dog/1", true),
                ("Dog/10", false),
                ("Dog", false),
                ("Cat/1", false),
            ],
        );
        check(
            "Dog/#",
            &[
                ("Dog/1", true),
                ("Dog/a/b", true),
                ("Dog", true),
                ("Dogs/1", false),
            ],
        );
        check(
            "Dog/+",
            &[("Dog/1", true), ("Dog/a/b", false), ("Dog", false)],
        );
        check(
            "Sensor/+/temp",
            &[
                ("Sensor/a/temp", true),
                ("Sensor/a/b/temp", false),
                ("Sensor/a", false),
            ],
        );
        check("Dog", &[("Dog", true), ("Dog/1", false)]);
        check(
            "Dog/x/#",
            &[("Dog/x", true), ("Dog/x/y", true), ("Dog/xy", false)],
        );
        check("Dog/a.b", &[("Dog/a.b", true), ("Dog/a", false)]);
    }

    #[test]
    fn every_export_filters() {
        let all = Filter::parse_every("#").unwrap();
        assert!(all.is_every() && !all.is_general());
        assert!(all.matches("Dog", Some("1")) && all.matches("Dog", None));
        assert!(all.matches("", Some("home/temp")) && !all.matches("", Some("$SYS/x")));
        let one = Filter::parse_every("+/1").unwrap();
        assert!(one.matches("Dog", Some("1")) && one.matches("Cat", Some("1")));
        assert!(!one.matches("Dog", Some("2")) && !one.matches("Dog", Some("1/a")));
        assert!(Filter::starts_with_wildcard("#") && Filter::starts_with_wildcard("$share/g/+/x"));
        assert!(!Filter::starts_with_wildcard("Dog/#") && !Filter::starts_with_wildcard("$SYS/#"));
        assert!(Filter::parse_every("#/x").is_err());
    }

    fn check_general(filter: &str, topics: &[(&str, bool)]) {
        for (topic, want) in topics {
            assert_eq!(general_matches(filter, topic), *want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn general_topic_matching() {
        check_general(
            "sport/#",
            &[("sport", true), ("sport/a/b", true), ("sports", false)],
        );
        check_general("+/+", &[("a/b", true), ("/b", true), ("a", false)]);
        check_general("#", &[("a", true), ("$SYS/x", false)]);
        check_general("$SYS/#", &[("$SYS/x", true)]);
        check_general("+/x", &[("$SYS/x", false), ("a/x", true)]);
        check_general("a/+/c", &[("a/b/c", true), ("a/b/d", false)]);
    }

    #[test]
    fn invalid_filters() {
        for (raw, err) in [
            ("", TopicError::Invalid("empty filter")),
            (
                "#",
                TopicError::Invalid("the first level must be an export name"),
            ),
            (
                "+/x",
                TopicError::Invalid("the first level must be an export name"),
            ),
            ("Dog/#/x", TopicError::Invalid("'#' must be the last level")),
            ("Dog/a+", TopicError::Invalid("a wildcard inside a level")),
            (
                "$share//Dog/1",
                TopicError::Invalid("a share name must be a non-empty literal"),
            ),
            (
                "$share/g/#",
                TopicError::Invalid("the first level must be an export name"),
            ),
        ] {
            assert_eq!(Filter::parse(raw), Err(err), "{raw:?}");
        }
        assert_eq!(
            Filter::parse("Dog/a/b").unwrap().exact_id().as_deref(),
            Some("a/b")
        );
        assert_eq!(Filter::parse("Dog/+").unwrap().exact_id(), None);
        let shared = Filter::parse("$share/g/Dog/+").unwrap();
        assert_eq!(
            (shared.share(), shared.topic_filter(), shared.as_str()),
            (Some("g"), "Dog/+", "$share/g/Dog/+")
        );
        assert!(shared.matches("Dog", Some("1")));
        let general = Filter::parse_general("$share/g/+/x").unwrap();
        assert!(general.is_general() && general.matches("", Some("a/x")));
        assert!(!general.matches("Dog", Some("a/x")));
        assert!(Filter::parse_general("a/#/b").is_err());
        assert!(PublishTopic::parse("Dog/#").is_err());
        assert!(PublishTopic::parse("Dog/").is_err());
        assert_eq!(
            PublishTopic::parse("Dog/a/b").unwrap(),
            PublishTopic {
                export: "Dog",
                id: Some("a/b")
            }
        );
    }
}
