//! Topic names and filters: validation and matching (MQTT 3.1.1 section 4.7).
//!
//! UTF-8 and U+0000 are checked by the codec; here are the structural rules. Matching is byte
//! for byte with no normalisation [MQTT-4.7.3-4].

pub use crate::message::MAX_TOPIC_LEVELS as MAX_LEVELS;

/// True if `topic` has more than `max` levels; `max` 0 (no configured limit) and anything
/// above `MAX_LEVELS` mean `MAX_LEVELS`.
pub fn too_deep(topic: &[u8], max: usize) -> bool {
    let max = if max == 0 {
        MAX_LEVELS
    } else {
        max.min(MAX_LEVELS)
    };
    topic.iter().filter(|&&b| b == b'/').count() >= max
}

pub use crate::message::{valid_filter, valid_topic_name as valid_name};

/// True if the filter has a `+` or `#` level, so it must live in the wildcard trie.
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// True if topic `name` matches `filter`; both assumed valid.
///
/// A filter whose first level is a wildcard never matches a name starting with `$`
/// [MQTT-4.7.2-1].
pub fn matches(filter: &str, name: &[u8]) -> bool {
    matches_by(filter, name, |f, n| f.as_bytes() == n)
}

/// As `matches`, with `level_eq` deciding whether a literal filter level equals a name level
/// (so an ACL pattern can substitute `%c` and `%u` without building the filter). `+` and `#`
/// keep their meaning only as whole levels; `filter` must be valid.
pub fn matches_by(filter: &str, name: &[u8], level_eq: impl Fn(&str, &[u8]) -> bool) -> bool {
    if name.first() == Some(&b'$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = name.split(|&b| b == b'/');
    let mut filters = filter.split('/');
    loop {
        match (filters.next(), names.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if level_eq(f, n) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic `inner` matches is also matched by `outer` (both valid filters).
pub fn covers(outer: &str, inner: &str) -> bool {
    // A leading wildcard never matches a `$` topic, which `inner` may name [MQTT-4.7.2-1].
    if outer.starts_with(['+', '#']) && inner.starts_with('$') {
        return false;
    }
    let (mut outer, mut inner) = (outer.split('/'), inner.split('/'));
    loop {
        match (outer.next(), inner.next()) {
            // "a/#" also matches "a" itself.
            (Some("#"), _) => return true,
            // "a/#" matches "a", which "a/+" does not.
            (Some("+"), Some(i)) if i != "#" => {}
            (Some(o), Some(i)) if o != "+" && o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if some topic name matches both filters (both valid).
pub fn intersects(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (wild(a) && dollar(b)) || (wild(b) && dollar(a)) {
        return false;
    }
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_covering_and_sharing_topics() {
        for (outer, inner) in [
            ("#", "a/b"),
            ("#", "#"),
            ("a/#", "a"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("+/+", "x/y"),
            ("$SYS/#", "$SYS/broker/+"),
        ] {
            assert!(covers(outer, inner), "{outer} covers {inner}");
        }
        for (outer, inner) in [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/+", "a"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
        ] {
            assert!(!covers(outer, inner), "{outer} does not cover {inner}");
        }
        for (a, b) in [
            ("#", "sec/x"),
            ("#", "+"),
            ("sec/#", "sec"),
            ("+/temp", "sensors/+"),
            ("a/+/c", "a/b/+"),
            ("$SYS/#", "$SYS/+"),
            ("+", "+"),
        ] {
            assert!(intersects(a, b) && intersects(b, a), "{a} meets {b}");
        }
        for (a, b) in [
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/+/c", "a/b"),
            ("sec/#", "other/#"),
        ] {
            assert!(!intersects(a, b) && !intersects(b, a), "{a} misses {b}");
        }
    }

    #[test]
    fn name_rules() {
        assert!(valid_name(b"a/b"));
        assert!(valid_name(b"/"));
        assert!(valid_name(b"$SYS/x"));
        assert!(!valid_name(b"")); // [MQTT-4.7.3-1]
        assert!(!valid_name(b"a/+")); // [MQTT-3.3.2-2]
        assert!(!valid_name(b"a/#"));
        assert!(!valid_name(b"a+b"));
    }

    #[test]
    fn level_limits() {
        assert!(!too_deep(b"a/b", 2));
        assert!(too_deep(b"a/b/c", 2));
        let deepest = vec!["x"; MAX_LEVELS].join("/");
        let deeper = format!("{deepest}/x");
        for max in [0, MAX_LEVELS, usize::MAX] {
            assert!(!too_deep(deepest.as_bytes(), max), "{max}");
            assert!(
                too_deep(deeper.as_bytes(), max),
                "{max}: no setting lifts the cap"
            );
        }
        assert!(too_deep(&[b'/'; 65_535], 0));
    }

    #[test]
    fn filter_rules() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "+/#", "$SYS/#", "a b",
        ] {
            assert!(valid_filter(ok), "{ok}");
        }
        // [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1]
        for bad in ["", "a/#/b", "a#", "#/", "a+/b", "a/b+", "++", "##"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn spec_matching_examples() {
        // Section 4.7.1.2 and 4.7.1.3 examples.
        let yes = [
            ("sport/tennis/player1/#", "sport/tennis/player1"),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
            ),
            ("sport/#", "sport"),
            ("#", "a/b/c"),
            ("sport/tennis/+", "sport/tennis/player1"),
            ("sport/+", "sport/"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("+", "a"),
            ("a/+/b", "a//b"),
            ("$SYS/#", "$SYS/broker/uptime"),
            ("$SYS/+", "$SYS/x"),
        ];
        for (f, n) in yes {
            assert!(matches(f, n.as_bytes()), "{f} should match {n}");
        }
        let no = [
            ("sport/tennis/+", "sport/tennis/player1/ranking"),
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
            // [MQTT-4.7.2-1]
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$x"),
            // [MQTT-4.7.3-4]
            ("a/b", "A/b"),
            ("a/b", "a//b"),
        ];
        for (f, n) in no {
            assert!(!matches(f, n.as_bytes()), "{f} should not match {n}");
        }
    }
}
