//! `nsswitch::parse` over whole files: every line it keeps has the shape the
//! module and `userdb-brokerctl` rely on, prints as a line that parses back
//! to itself, and is the last line of the file for its database; no
//! database of the file is left out.

use std::collections::HashMap;

use userdb_proto::nsswitch::{parse, parse_line, Line};

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = parse(&text);
    // The last line of the file for each database, in one pass.
    let mut last: HashMap<String, Line> = HashMap::new();
    for line in text.lines().filter_map(parse_line) {
        last.insert(line.database.clone(), line);
    }
    for line in &lines {
        assert_shape(line);
        assert_eq!(parse_line(&line.to_string()).as_ref(), Some(line));
        let expected = last.remove(&line.database);
        assert_eq!(
            expected.as_ref(),
            Some(line),
            "not the one last line for its database"
        );
    }
    assert!(last.is_empty(), "databases left out: {last:?}");
    let printed: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(
        parse(&printed),
        lines,
        "the printed file reads back differently"
    );
}

fn assert_shape(line: &Line) {
    let bare = |word: &str, also: &[char]| {
        !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || also.contains(&c))
    };
    assert!(bare(&line.database, &[':', '#']), "{line:?}");
    for entry in &line.entries {
        assert!(bare(&entry.service, &['[', '#']), "{line:?}");
        for action in &entry.actions {
            for word in [&action.status, &action.action] {
                assert!(!word.contains(|c: char| c.is_whitespace() || "]#".contains(c)));
                assert!(!word.contains(|c: char| c.is_ascii_uppercase()), "{line:?}");
            }
            assert!(!action.status.contains('='), "{line:?}");
        }
    }
}
