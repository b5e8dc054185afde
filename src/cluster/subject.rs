//! MQTT topics and filters as NATS subjects, and back.
//!
//! A topic's levels become the subject's tokens under `PREFIX.m.`. NATS gives `.`, `*`, `>`
//! and whitespace a meaning, and a token cannot be empty, so each level is escaped: every
//! byte outside printable ASCII, and `.`, `*`, `>` and `%` themselves, become `%HH`, and an
//! empty level becomes the token `%` (which no escaped level can be). The mapping is one to
//! one, so the receiving node gets the publisher's topic back exactly.
//!
//! A filter's `+` is NATS's `*`, and its `#` is `>` (one or more tokens) plus the parent
//! subject, since `a/#` also matches `a`. NATS knows nothing of MQTT's `$` rule (a filter
//! starting with a wildcard does not match a topic starting with `$`): what it delivers is
//! a superset, and the receiving node's own trie decides, as it does for every message.

use std::fmt::Write;

/// The subject a message on `topic` is published to, under `prefix`.
pub fn of_topic(prefix: &str, topic: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + 3 + topic.len() + topic.len() / 4);
    s.push_str(prefix);
    s.push_str(".m");
    for level in topic.split(|&b| b == b'/') {
        s.push('.');
        escape(level, &mut s);
    }
    s
}

/// The topic a subject of `of_topic` stands for; `None` if it is not one (another prefix, a
/// malformed escape).
pub fn to_topic(prefix: &str, subject: &str) -> Option<Vec<u8>> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".m.")?;
    let mut topic = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        if token == "%" {
            continue;
        }
        let bytes = token.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] == b'%' {
                let hex = std::str::from_utf8(bytes.get(j + 1..j + 3)?).ok()?;
                topic.push(u8::from_str_radix(hex, 16).ok()?);
                j += 3;
            } else {
                topic.push(bytes[j]);
                j += 1;
            }
        }
    }
    Some(topic)
}

/// The subjects (one, or two for a filter ending in `#` below the top) a NATS subscription
/// for `filter` takes, under `prefix`.
pub fn of_filter(prefix: &str, filter: &str) -> Vec<String> {
    let mut s = String::with_capacity(prefix.len() + 3 + filter.len() + filter.len() / 4);
    s.push_str(prefix);
    s.push_str(".m");
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "#" => {
                if s.len() > prefix.len() + 2 {
                    parent = Some(s.clone());
                }
                s.push_str(".>");
                break;
            }
            "+" => s.push_str(".*"),
            _ => {
                s.push('.');
                escape(level.as_bytes(), &mut s);
            }
        }
    }
    let mut all = vec![s];
    all.extend(parent);
    all
}

fn escape(level: &[u8], s: &mut String) {
    if level.is_empty() {
        s.push('%');
        return;
    }
    for &b in level {
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'.' | b'*' | b'>' | b'%') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::topic;
    use proptest::prelude::*;

    /// NATS's own rule: `*` one token, `>` one or more at the end.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn valid_token(t: &str) -> bool {
        !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
    }

    #[test]
    fn known_mappings() {
        assert_eq!(of_topic("tern", b"a/b"), "tern.m.a.b");
        assert_eq!(of_topic("tern", b"/a//"), "tern.m.%.a.%.%");
        assert_eq!(of_topic("tern", b"v1.2 x>*"), "tern.m.v1%2E2%20x%3E%2A");
        assert_eq!(of_topic("tern", "é%".as_bytes()), "tern.m.%C3%A9%25");
        assert_eq!(of_filter("tern", "a/+/#"), ["tern.m.a.*.>", "tern.m.a.*"]);
        assert_eq!(of_filter("tern", "#"), ["tern.m.>"]);
        assert_eq!(of_filter("tern", "+"), ["tern.m.*"]);
        assert_eq!(
            to_topic("tern", "tern.m.%.a.%.%").as_deref(),
            Some(&b"/a//"[..])
        );
        assert_eq!(to_topic("other", "tern.m.a"), None);
        assert_eq!(to_topic("tern", "tern.m.a%G1"), None);
        assert_eq!(to_topic("tern", "tern.m.a%4"), None);
    }

    fn levels() -> impl Strategy<Value = Vec<String>> {
        // Levels from a small alphabet, so filters and topics meet often; `any` for the rest.
        let level = prop_oneof![
            4 => "[ab.%*> $é]{0,3}",
            1 => any::<String>().prop_map(|s| s.replace(['/', '+', '#', '\0'], "")),
        ];
        prop::collection::vec(level, 1..5)
    }

    proptest! {
        #[test]
        fn a_topic_comes_back_exactly(levels in levels()) {
            let topic = levels.join("/");
            let subject = of_topic("tern", topic.as_bytes());
            prop_assert!(subject.split('.').all(valid_token), "{subject}");
            prop_assert_eq!(to_topic("tern", &subject), Some(topic.into_bytes()));
        }

        #[test]
        fn nats_delivers_what_the_filter_matches(
            levels in levels(),
            pattern in prop::collection::vec(0u8..4, 1..5),
        ) {
            let topic = levels.join("/");
            // A filter shaped by `pattern` over the topic's own levels: the level, `+`, `#`.
            let mut parts = Vec::new();
            for (i, p) in pattern.iter().enumerate() {
                match p {
                    0 => parts.push("+".to_string()),
                    1 => { parts.push("#".into()); break; }
                    _ => parts.push(levels.get(i).cloned().unwrap_or_else(|| "x".into())),
                }
            }
            let filter = parts.join("/");
            prop_assume!(topic::valid_filter(&filter));
            let subject = of_topic("tern", topic.as_bytes());
            let nats = of_filter("tern", &filter).iter().any(|p| nats_matches(p, &subject));
            let mqtt = topic::matches(&filter, topic.as_bytes());
            let dollar = topic.starts_with('$') && filter.starts_with(['+', '#']);
            if dollar {
                // NATS gives more; the receiving trie keeps the `$` rule.
                prop_assert!(nats || !mqtt);
            } else {
                prop_assert_eq!(nats, mqtt, "{} {}", filter, topic);
            }
        }
    }
}
