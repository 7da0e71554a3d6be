//! Comparing command output line by line with readable failures: a group of
//! 3000 members must not bury the one line that differs.

use std::collections::BTreeMap;

/// Longest part of a line shown in a failure message.
const SHOWN: usize = 160;

fn shorten(line: &str) -> String {
    if line.len() <= SHOWN {
        line.to_owned()
    } else {
        let cut = (0..=SHOWN)
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}… ({} bytes)", &line[..cut], line.len())
    }
}

fn counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut map = BTreeMap::new();
    for line in lines {
        *map.entry(line).or_insert(0) += 1;
    }
    map
}

/// Asserts that `actual` holds exactly the lines of `expected`, each as
/// often, in any order; on failure lists what is missing and what is extra.
pub fn assert_same_lines<A: AsRef<str>, E: AsRef<str>>(what: &str, actual: &[A], expected: &[E]) {
    let have = counts(actual.iter().map(AsRef::as_ref));
    let want = counts(expected.iter().map(AsRef::as_ref));
    if have == want {
        return;
    }
    let mut report = format!(
        "{what}: output differs ({} lines, expected {})\n",
        actual.len(),
        expected.len()
    );
    for (line, &n) in &want {
        let got = have.get(line).copied().unwrap_or(0);
        if got < n {
            report += &format!("  missing ({}x): {}\n", n - got, shorten(line));
        }
    }
    for (line, &n) in &have {
        let wanted = want.get(line).copied().unwrap_or(0);
        if n > wanted {
            report += &format!("  unexpected ({}x): {}\n", n - wanted, shorten(line));
        }
    }
    panic!("{report}");
}

/// Asserts one line equals another, showing long lines shortened.
pub fn assert_line(what: &str, actual: &str, expected: &str) {
    if actual != expected {
        let first_difference = actual
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        panic!(
            "{what}: lines differ at byte {first_difference}\n  actual:   {}\n  expected: {}",
            shorten(actual),
            shorten(expected)
        );
    }
}
