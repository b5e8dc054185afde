//! A topic-filter trie for wildcard filters (exact filters live in a hash map beside it).
//!
//! Each node is one topic level. `+` and `#` have their own slots so matching a name costs one
//! child lookup per level (a short list or a hash map, see `levels`) plus a visit of every `+`
//! branch, never a scan of all filters.
//! Wildcards at the first level skip names starting with `$` [MQTT-4.7.2-1].

use super::levels::Levels;

/// Maps topic filters to values and finds every value whose filter matches a topic name.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: Levels<Node<V>>,
    plus: Option<Box<Node<V>>>,
    /// Value of the filter ending in `#` at this level.
    hash: Option<V>,
    /// Value of the filter ending exactly here.
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: Levels::default(),
            plus: None,
            hash: None,
            value: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.value.is_none()
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> Trie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of filters stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no filter is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value stored for exactly this filter.
    pub fn get(&self, filter: &str) -> Option<&V> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "#" if levels.peek().is_none() => return node.hash.as_ref(),
                "+" => node = node.plus.as_deref()?,
                l => node = node.children.get(l.as_bytes())?,
            }
        }
        node.value.as_ref()
    }

    /// The value stored for exactly this filter, to change in place.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "#" if levels.peek().is_none() => return node.hash.as_mut(),
                "+" => node = node.plus.as_deref_mut()?,
                l => node = node.children.get_mut(l.as_bytes())?,
            }
        }
        node.value.as_mut()
    }

    /// Stores `value` for `filter` (assumed valid), returning the value it replaces.
    pub fn insert(&mut self, filter: &str, value: V) -> Option<V> {
        let (slot, len) = self.slot(filter);
        let old = slot.replace(value);
        if old.is_none() {
            *len += 1;
        }
        old
    }

    /// The value for `filter` (assumed valid), made with `make` if there is none.
    pub fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> V) -> &mut V {
        let (slot, len) = self.slot(filter);
        if slot.is_none() {
            *len += 1;
        }
        slot.get_or_insert_with(make)
    }

    /// The slot of `filter`, creating the nodes on its way, and the count to keep.
    fn slot(&mut self, filter: &str) -> (&mut Option<V>, &mut usize) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let slot = loop {
            let Some(level) = levels.next() else {
                break &mut node.value;
            };
            match level {
                "#" if levels.peek().is_none() => break &mut node.hash,
                "+" => node = node.plus.get_or_insert_with(Box::default),
                l => node = node.children.get_or_default(l.as_bytes()),
            }
        };
        (slot, &mut self.len)
    }

    /// Removes the value for `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let old = remove_at(&mut self.root, &levels);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Calls `visit` with every filter stored and its value.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &V)) {
        let mut path = String::new();
        visit_all(&self.root, &mut path, &mut visit);
    }

    /// Calls `found` with the value of every filter matching topic name `name`.
    pub fn for_each_match<'a>(&'a self, name: &[u8], mut found: impl FnMut(&'a V)) {
        let levels = name.split(|&b| b == b'/');
        let dollar = name.first() == Some(&b'$');
        walk(&self.root, levels, !dollar, &mut found);
    }
}

/// Visits `node` and below; `path` is the filter up to `node` (each level followed by '/').
fn visit_all<V>(node: &Node<V>, path: &mut String, visit: &mut impl FnMut(&str, &V)) {
    let here = path.len();
    let trimmed = |p: &str| p.strip_suffix('/').unwrap_or(p).to_owned();
    if let Some(v) = &node.value {
        visit(&trimmed(path), v);
    }
    if let Some(v) = &node.hash {
        path.push('#');
        visit(path, v);
        path.truncate(here);
    }
    if let Some(plus) = &node.plus {
        path.push_str("+/");
        visit_all(plus, path, visit);
        path.truncate(here);
    }
    for (level, child) in node.children.iter() {
        path.push_str(&String::from_utf8_lossy(level));
        path.push('/');
        visit_all(child, path, visit);
        path.truncate(here);
    }
}

fn remove_at<V>(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
    let Some((&level, rest)) = levels.split_first() else {
        return node.value.take();
    };
    if level == "#" && rest.is_empty() {
        return node.hash.take();
    }
    if level == "+" {
        let child = node.plus.as_deref_mut()?;
        let old = remove_at(child, rest);
        if child.is_empty() {
            node.plus = None;
        }
        return old;
    }
    let child = node.children.get_mut(level.as_bytes())?;
    let old = remove_at(child, rest);
    if child.is_empty() {
        node.children.remove(level.as_bytes());
    }
    old
}

fn walk<'a, 'n, V>(
    node: &'a Node<V>,
    mut levels: impl Iterator<Item = &'n [u8]> + Clone,
    wildcards: bool,
    found: &mut impl FnMut(&'a V),
) {
    let Some(level) = levels.next() else {
        // "a/#" also matches "a" itself.
        if let Some(v) = &node.value {
            found(v);
        }
        if let Some(v) = &node.hash {
            found(v);
        }
        return;
    };
    if wildcards {
        if let Some(v) = &node.hash {
            found(v);
        }
        if let Some(plus) = &node.plus {
            walk(plus, levels.clone(), true, found);
        }
    }
    if let Some(child) = node.children.get(level) {
        walk(child, levels, true, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::topic;

    fn matched(t: &Trie<&'static str>, name: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        t.for_each_match(name.as_bytes(), |v| out.push(*v));
        out.sort_unstable();
        out
    }

    const FILTERS: [&str; 12] = [
        "#", "+", "a/#", "a/+", "a/+/c", "+/b", "a/b", "$SYS/#", "$SYS/+/x", "/+", "+/+", "a/b/#",
    ];

    #[test]
    fn matches_agree_with_topic_matches() {
        let mut t = Trie::new();
        for f in FILTERS {
            assert!(t.insert(f, f).is_none());
        }
        assert_eq!(t.len(), FILTERS.len());
        for name in [
            "a", "a/b", "a/b/c", "a/x/c", "b", "x/b", "/", "/x", "$SYS/a/x", "$SYS", "$SYS/b",
            "a//c", "a/b/c/d",
        ] {
            let mut want: Vec<&str> = FILTERS
                .iter()
                .copied()
                .filter(|f| topic::matches(f, name.as_bytes()))
                .collect();
            want.sort_unstable();
            assert_eq!(matched(&t, name), want, "name {name}");
        }
    }

    #[test]
    fn for_each_gives_back_every_filter() {
        let mut t = Trie::new();
        let filters = [&FILTERS[..], &["a/", "//#", "+/+/"]].concat();
        for f in &filters {
            t.insert(f, *f);
        }
        let mut seen = Vec::new();
        t.for_each(|filter, v| {
            assert_eq!(filter, *v);
            seen.push(filter.to_owned());
        });
        seen.sort_unstable();
        let mut want: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let mut t = Trie::new();
        t.insert("#", "#");
        t.insert("+/x", "+/x");
        t.insert("$SYS/#", "$SYS/#");
        assert_eq!(matched(&t, "$SYS/x"), vec!["$SYS/#"]);
        assert_eq!(matched(&t, "a/x"), vec!["#", "+/x"]);
    }

    #[test]
    fn insert_replace_get_remove_and_prune() {
        let mut t = Trie::new();
        assert_eq!(t.insert("a/+/c", 1), None);
        assert_eq!(t.insert("a/+/c", 2), Some(1));
        assert_eq!(t.insert("a/#", 3), None);
        assert_eq!(t.get("a/+/c"), Some(&2));
        assert_eq!(t.get("a/#"), Some(&3));
        assert_eq!(t.get("a/+"), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove("a/+"), None);
        assert_eq!(t.remove("a/+/c"), Some(2));
        assert_eq!(t.remove("a/#"), Some(3));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty branches pruned");
    }
}
