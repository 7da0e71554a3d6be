//! A parser for `/etc/nsswitch.conf` lines. The module uses it to learn
//! whether glibc reads the files before asking the broker; the command line
//! uses it to check and edit the configuration. Pure: callers read the file.

/// One `database: service [STATUS=action] service ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub database: String,
    pub entries: Vec<Entry>,
}

/// A service with the action items that follow it on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub service: String,
    pub actions: Vec<Action>,
}

/// One `[!]STATUS=action` item, lower-cased (glibc compares them ignoring case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub negated: bool,
    pub status: String,
    pub action: String,
}

/// The services that make glibc read `/etc/passwd` and `/etc/group` itself.
pub const FILES_SERVICES: [&str; 2] = ["files", "compat"];

impl Line {
    pub fn position(&self, service: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.service == service)
    }

    /// Whether `files` (or `compat`) stands before `service` on this line.
    pub fn files_before(&self, service: &str) -> bool {
        match self.position(service) {
            Some(at) => self.entries[..at]
                .iter()
                .any(|e| FILES_SERVICES.contains(&e.service.as_str())),
            None => false,
        }
    }

    /// Whether any entry before `service` carries `SUCCESS=merge`.
    pub fn merges_into(&self, service: &str) -> bool {
        match self.position(service) {
            Some(at) => self.entries[..at].iter().any(Entry::merges),
            None => false,
        }
    }
}

impl Entry {
    pub fn merges(&self) -> bool {
        self.actions
            .iter()
            .any(|a| !a.negated && a.status == "success" && a.action == "merge")
    }
}

/// A line as glibc reads it back: `database: service [!STATUS=action] ...`,
/// statuses upper-cased by convention.
impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.database)?;
        for entry in &self.entries {
            write!(f, " {entry}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.service)?;
        for (i, a) in self.actions.iter().enumerate() {
            let open = if i == 0 { " [" } else { " " };
            let bang = if a.negated { "!" } else { "" };
            let status = a.status.to_ascii_uppercase();
            write!(f, "{open}{bang}{status}={}", a.action)?;
        }
        if !self.actions.is_empty() {
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// Parses the whole file; comments, blank and malformed lines are skipped,
/// and a later line for the same database replaces an earlier one, as glibc does.
pub fn parse(text: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for raw in text.lines() {
        let Some(line) = parse_line(raw) else {
            continue;
        };
        match lines.iter_mut().find(|l| l.database == line.database) {
            Some(existing) => *existing = line,
            None => lines.push(line),
        }
    }
    lines
}

/// Parses one line; `None` for comments, blank lines and lines without `:`.
pub fn parse_line(raw: &str) -> Option<Line> {
    let text = raw.split('#').next().unwrap_or("");
    let (database, rest) = text.split_once(':')?;
    let database = database.trim();
    if database.is_empty() || database.contains(char::is_whitespace) {
        return None;
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let (inside, tail) = after.split_once(']').unwrap_or((after, ""));
            if let Some(last) = entries.last_mut() {
                last.actions
                    .extend(inside.split_whitespace().filter_map(parse_action));
            }
            rest = tail.trim_start();
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '[')
                .unwrap_or(rest.len());
            entries.push(Entry {
                service: rest[..end].to_owned(),
                actions: Vec::new(),
            });
            rest = rest[end..].trim_start();
        }
    }
    Some(Line {
        database: database.to_owned(),
        entries,
    })
}

fn parse_action(item: &str) -> Option<Action> {
    let (status, action) = item.split_once('=')?;
    let (negated, status) = match status.strip_prefix('!') {
        Some(s) => (true, s),
        None => (false, status),
    };
    Some(Action {
        negated,
        status: status.to_ascii_lowercase(),
        action: action.to_ascii_lowercase(),
    })
}

/// The line for `database`, if the file has one.
pub fn find<'a>(lines: &'a [Line], database: &str) -> Option<&'a Line> {
    lines.iter().find(|l| l.database == database)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
passwd:         files broker
group:          files [SUCCESS=merge] broker   # trailing
shadow: broker files
gshadow:files
hosts: files dns
group: files [ SUCCESS=Merge !notfound=return ] systemd broker
";

    #[test]
    fn files_before_broker() {
        let lines = parse(SAMPLE);
        assert!(find(&lines, "passwd").unwrap().files_before("broker"));
        assert!(!find(&lines, "shadow").unwrap().files_before("broker"));
        assert!(!find(&lines, "gshadow").unwrap().files_before("broker"));
        assert!(find(&lines, "initgroups").is_none());
    }

    #[test]
    fn later_line_wins_and_actions_attach_to_previous_service() {
        let lines = parse(SAMPLE);
        let group = find(&lines, "group").unwrap();
        let services: Vec<&str> = group.entries.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(services, ["files", "systemd", "broker"]);
        assert_eq!(group.entries[0].actions.len(), 2);
        assert!(group.entries[0].merges());
        assert!(group.merges_into("systemd"));
        assert!(group.files_before("broker"));
        assert!(group.entries[0].actions[1].negated);
    }

    #[test]
    fn a_printed_line_reads_back_the_same() {
        let line = parse_line("group: files [ success=merge !NotFound=Return ] broker #x").unwrap();
        assert_eq!(
            line.to_string(),
            "group: files [SUCCESS=merge !NOTFOUND=return] broker"
        );
        assert_eq!(parse_line(&line.to_string()), Some(line));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_line("no colon here"), None);
        assert_eq!(parse_line(": files"), None);
        assert_eq!(parse_line("   # only comment"), None);
        let l = parse_line("passwd: files [SUCCESS=merge").unwrap();
        assert_eq!(l.entries.len(), 1);
        assert!(l.entries[0].merges());
    }
}
