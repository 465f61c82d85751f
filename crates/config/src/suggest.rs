//! "Did you mean ...?" suggestions for unknown keys and names.

/// The candidate closest to `input` by edit distance, when it is close enough to be a
/// plausible typo: at most a third of the input's length in edits (at least 1, but 0
/// for names under 3 characters), after ignoring case, `_` and `-`.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let needle = normalize(input);
    let len = needle.chars().count();
    let limit = if len < 3 { 0 } else { (len / 3).max(1) };
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&needle, &normalize(candidate)), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Lowercase with `_`, `-`, `.` and spaces removed: how names are compared when case
/// and separators should not matter (`least_latency` == `LeastLatency`).
pub(crate) fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Levenshtein distance over chars, with adjacent transpositions counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["bind_address", "workers", "keepalive_timeout"];
        assert_eq!(closest("bind_adress", keys), Some("bind_address"));
        assert_eq!(closest("wrokers", keys), Some("workers"));
        assert_eq!(closest("keepalive-timeout", keys), Some("keepalive_timeout"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("y", ["p", "q"]), None);
        assert_eq!(closest("P", ["p", "q"]), Some("p"));
        assert_eq!(closest("LeastLatncy", ["LeastLatency", "Random"]), Some("LeastLatency"));
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
