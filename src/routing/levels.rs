//! A trie node's children by topic level: a short list searched byte for byte while there
//! are few (most nodes have one or two), a hash map beyond. Matching a topic then costs a
//! comparison per level instead of a SipHash, and level names a client chooses can make no
//! list longer than `SMALL`, so the map's DoS-resistant hashing still guards the wide nodes.

use std::collections::HashMap;

/// Children kept in a list up to this many.
const SMALL: usize = 8;

/// Values by level name (a level is a topic's bytes between two `/`).
#[derive(Debug)]
pub enum Levels<N> {
    /// Few: searched in order.
    Few(Vec<(Box<[u8]>, N)>),
    /// Many: hashed.
    Many(HashMap<Box<[u8]>, N>),
}

impl<N> Default for Levels<N> {
    fn default() -> Self {
        Levels::Few(Vec::new())
    }
}

impl<N: Default> Levels<N> {
    /// True if there is no child.
    pub fn is_empty(&self) -> bool {
        match self {
            Levels::Few(v) => v.is_empty(),
            Levels::Many(m) => m.is_empty(),
        }
    }

    /// The child at `level`.
    #[inline]
    pub fn get(&self, level: &[u8]) -> Option<&N> {
        match self {
            Levels::Few(v) => v.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Levels::Many(m) => m.get(level),
        }
    }

    /// The child at `level`, to change.
    pub fn get_mut(&mut self, level: &[u8]) -> Option<&mut N> {
        match self {
            Levels::Few(v) => v.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Levels::Many(m) => m.get_mut(level),
        }
    }

    /// The child at `level`, made empty if there is none.
    pub fn get_or_default(&mut self, level: &[u8]) -> &mut N {
        if let Levels::Few(v) = self {
            if v.len() >= SMALL && !v.iter().any(|(l, _)| **l == *level) {
                *self = Levels::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Levels::Few(v) => {
                let at = match v.iter().position(|(l, _)| **l == *level) {
                    Some(at) => at,
                    None => {
                        v.push((level.into(), N::default()));
                        v.len() - 1
                    }
                };
                &mut v[at].1
            }
            Levels::Many(m) => m.entry(level.into()).or_default(),
        }
    }

    /// Removes the child at `level`.
    pub fn remove(&mut self, level: &[u8]) {
        match self {
            Levels::Few(v) => v.retain(|(l, _)| **l != *level),
            Levels::Many(m) => {
                m.remove(level);
            }
        }
    }

    /// Every child with its level.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &N)> + '_> {
        match self {
            Levels::Few(v) => Box::new(v.iter().map(|(l, n)| (&**l, n))),
            Levels::Many(m) => Box::new(m.iter().map(|(l, n)| (&**l, n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_a_list_to_a_map_and_keeps_every_child() {
        let mut l: Levels<u32> = Levels::default();
        for i in 0..20u32 {
            *l.get_or_default(format!("l{i}").as_bytes()) = i;
            assert_eq!(matches!(l, Levels::Few(_)), i < SMALL as u32, "{i}");
        }
        for i in 0..20u32 {
            assert_eq!(l.get(format!("l{i}").as_bytes()), Some(&i));
        }
        *l.get_or_default(b"l3") += 100;
        assert_eq!(l.get(b"l3"), Some(&103));
        l.remove(b"l3");
        assert_eq!(l.get(b"l3"), None);
        assert_eq!(l.iter().count(), 19);
        assert!(!l.is_empty());
    }
}
