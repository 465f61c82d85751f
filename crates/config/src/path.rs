//! Key paths (`backends[1].url`) and the operations the loader needs on a figment
//! value tree: find, remove, and map a path back to the file's original indices.

use std::fmt;

use figment::value::Value;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A list index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }
}

impl From<&String> for Seg {
    fn from(key: &String) -> Self {
        Seg::Key(key.clone())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// A key path, rendered `server.tls.cert`, `backends[1].url`, `routing.weights."http://a:1"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

/// `kp!["backends", i, "url"]`.
macro_rules! kp {
    ($($seg:expr),* $(,)?) => {
        $crate::path::KeyPath(vec![$($crate::path::Seg::from($seg)),*])
    };
}
pub(crate) use kp;

impl KeyPath {
    /// Append a segment.
    pub(crate) fn join(&self, seg: impl Into<Seg>) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(seg.into());
        KeyPath(segs)
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub(crate) fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Interpret figment's string path against `tree`: a segment under a list is an index.
    pub(crate) fn from_figment(tree: &Value, path: &[String]) -> KeyPath {
        let mut node = Some(tree);
        let mut segs = Vec::with_capacity(path.len());
        for part in path {
            match (node, part.parse::<usize>()) {
                (Some(Value::Array(_, items)), Ok(i)) => {
                    segs.push(Seg::Index(i));
                    node = items.get(i);
                }
                (Some(Value::Dict(_, dict)), _) => {
                    segs.push(Seg::Key(part.clone()));
                    node = dict.get(part);
                }
                _ => {
                    segs.push(Seg::Key(part.clone()));
                    node = None;
                }
            }
        }
        KeyPath(segs)
    }

    /// The string segments figment and metadata interpolation use.
    pub(crate) fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let plain = !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if plain { f.write_str(key)? } else { write!(f, "{key:?}")? }
                }
            }
        }
        Ok(())
    }
}

/// The node at `path`, if there is one.
pub(crate) fn find<'a>(tree: &'a Value, path: &KeyPath) -> Option<&'a Value> {
    let mut node = tree;
    for seg in &path.0 {
        node = match (node, seg) {
            (Value::Dict(_, dict), Seg::Key(k)) => dict.get(k)?,
            (Value::Array(_, items), Seg::Index(i)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The outcome of [`remove`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// Nothing at that path (or the path is the root).
    Nothing,
    /// A mapping entry was removed.
    Key,
    /// A list element was removed: later elements of that list moved down by one.
    ListElement(Shift),
}

/// A list element removal, remembered so later paths can be mapped back to the
/// indices the user wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shift {
    list: KeyPath,
    index: usize,
}

/// Remove the node at `path` from `tree`.
pub(crate) fn remove(tree: &mut Value, path: &KeyPath) -> Removed {
    let Some((last, parent_path)) = path.0.split_last() else {
        return Removed::Nothing;
    };
    let mut node = tree;
    for seg in parent_path {
        let next = match (node, seg) {
            (Value::Dict(_, dict), Seg::Key(k)) => dict.get_mut(k),
            (Value::Array(_, items), Seg::Index(i)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return Removed::Nothing,
        }
    }
    match (node, last) {
        (Value::Dict(_, dict), Seg::Key(k)) => {
            if dict.remove(k).is_some() {
                Removed::Key
            } else {
                Removed::Nothing
            }
        }
        (Value::Array(_, items), Seg::Index(i)) if *i < items.len() => {
            items.remove(*i);
            Removed::ListElement(Shift { list: KeyPath(parent_path.to_vec()), index: *i })
        }
        _ => Removed::Nothing,
    }
}

/// Map `path`, expressed in the tree after `shifts` (oldest first) were applied, back
/// to the original tree's indices.
pub(crate) fn unshift(path: &KeyPath, shifts: &[Shift]) -> KeyPath {
    let mut segs = path.0.clone();
    for shift in shifts.iter().rev() {
        let depth = shift.list.0.len();
        if segs.len() > depth
            && segs[..depth] == shift.list.0[..]
            && let Seg::Index(i) = &mut segs[depth]
            && *i >= shift.index
        {
            *i += 1;
        }
    }
    KeyPath(segs)
}

/// Drop mapping entries whose value is null, recursively: `tls:` with nothing after it
/// means "not set", exactly like leaving the key out.
pub(crate) fn strip_nulls(value: &mut Value) {
    match value {
        Value::Dict(_, dict) => {
            dict.retain(|_, v| !matches!(v, Value::Empty(..)));
            dict.values_mut().for_each(strip_nulls);
        }
        Value::Array(_, items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn renders_paths() {
        assert_eq!(kp!["backends", 1, "url"].to_string(), "backends[1].url");
        assert_eq!(
            kp!["routing", "weights", "http://a:1"].to_string(),
            "routing.weights.\"http://a:1\""
        );
        assert_eq!(kp!["server"].to_string(), "server");
    }

    #[test]
    fn figment_paths_become_indices_under_lists() {
        let t = tree("backends:\n  - name: a\nweights:\n  '0': 1\n");
        let p = KeyPath::from_figment(&t, &["backends".into(), "0".into(), "name".into()]);
        assert_eq!(p, kp!["backends", 0, "name"]);
        let p = KeyPath::from_figment(&t, &["weights".into(), "0".into()]);
        assert_eq!(p, kp!["weights", "0"]);
    }

    #[test]
    fn removal_and_unshift_recover_original_indices() {
        let mut t = tree("l: [a, b, c, d]\n");
        let Removed::ListElement(first) = remove(&mut t, &kp!["l", 1]) else { panic!() };
        // Now [a, c, d]; removing index 1 again removes "c".
        let Removed::ListElement(second) = remove(&mut t, &kp!["l", 1]) else { panic!() };
        let shifts = vec![first, second];
        // "d" is at index 1 now, index 3 originally.
        assert_eq!(unshift(&kp!["l", 1], &shifts), kp!["l", 3]);
        assert_eq!(unshift(&kp!["l", 0], &shifts), kp!["l", 0]);
        assert_eq!(find(&t, &kp!["l", 1]).and_then(|v| v.as_str()), Some("d"));
        assert_eq!(remove(&mut t, &kp!["l", 9]), Removed::Nothing);
        assert_eq!(remove(&mut t, &kp!["nope", "x"]), Removed::Nothing);
    }

    #[test]
    fn nulls_are_absent() {
        let mut t = tree("server:\n  tls:\n  workers: 2\n");
        strip_nulls(&mut t);
        assert!(find(&t, &kp!["server", "tls"]).is_none());
        assert!(find(&t, &kp!["server", "workers"]).is_some());
    }
}
