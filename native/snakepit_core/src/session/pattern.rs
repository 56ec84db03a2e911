//! Name patterns of `ListVariables`: `*` matches any run of characters,
//! everything else matches itself, and the empty pattern matches every name.

/// Whether `name` matches `pattern`.
///
/// Greedy matching that backtracks only to the last `*`, so the cost is at
/// most the product of the lengths and usually linear. Bytes are compared,
/// which is exact for UTF-8 since `*` is ASCII.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Position after the last `*` seen, and where in `name` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            pi += 1;
            star = Some((pi, ni));
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((after_star, start)) = star {
            // Let the last `*` swallow one more byte and retry.
            pi = after_star;
            ni = start + 1;
            star = Some((after_star, start + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn empty_pattern_matches_everything() {
        assert!(matches("", "anything"));
        assert!(matches("", ""));
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(matches("alpha", "alpha"));
        assert!(!matches("alpha", "alphabet"));
        assert!(!matches("alpha", "alph"));
        assert!(!matches("alpha", "Alpha"));
    }

    #[test]
    fn star_matches_any_run() {
        assert!(matches("*", "x"));
        assert!(matches("*", ""));
        assert!(matches("temp_*", "temp_"));
        assert!(matches("temp_*", "temp_max"));
        assert!(!matches("temp_*", "tmp_max"));
        assert!(matches("*_max", "temp_max"));
        assert!(!matches("*_max", "temp_min"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("a**c", "abc"));
        assert!(matches("*ab", "aab"));
        assert!(matches("*aab", "aaab"));
        assert!(!matches("*aab", "aaba"));
    }

    #[test]
    fn multibyte_names() {
        assert!(matches("température_*", "température_max"));
        assert!(matches("*é*", "café crème"));
        assert!(!matches("*ü*", "café"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let name = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!matches(&pattern, &name));
    }
}
