//! Shell-style wildcards for function names: `*`, `?` and `[...]` classes.

/// Whether `name` matches the shell-style `pattern` as a whole. `*` matches any run
/// of characters (including `::`), `?` one character, `[abc]`/`[a-z]`/`[!a]` one
/// character of (not of) a class.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in
    // practice and never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_matches(&pattern, p, name[n]) {
                        if matched {
                            p = next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == '[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                literal if literal == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_n)) => {
                p = star_p + 1;
                n = star_n + 1;
                star = Some((star_p, star_n + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `pattern[start] == '['`; returns whether
/// it matched and the index after the class, or `None` if the class is unterminated.
fn class_matches(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() && (first || pattern[i] != ']') {
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == '-' && pattern[i + 2] != ']' {
            matched |= pattern[i] <= c && c <= pattern[i + 2];
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    (i < pattern.len()).then_some((matched != negated, i + 1))
}

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn wildcards() {
        assert!(matches_pattern("ipc_kmsg_*", "ipc_kmsg_get"));
        assert!(!matches_pattern("ipc_kmsg_*", "ipc_kmsg"));
        assert!(matches_pattern("*", ""));
        assert!(matches_pattern(
            "*::port_send",
            "demo_kernel::ipc::ports::port_send"
        ));
        assert!(matches_pattern("vm_?ault", "vm_fault"));
        assert!(matches_pattern("a*b*c", "aXbYbZc"));
        assert!(!matches_pattern("a*b*c", "aXbYbZ"));
        assert!(matches_pattern("ipc_kmsg_[cd]*", "ipc_kmsg_copyin"));
        assert!(!matches_pattern("ipc_kmsg_[!cd]*", "ipc_kmsg_copyin"));
        assert!(matches_pattern("x[a-c]", "xb"));
        assert!(matches_pattern("exact", "exact"));
        assert!(!matches_pattern("exact", "exactly"));
    }
}
