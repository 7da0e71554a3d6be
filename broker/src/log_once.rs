//! Logging each problem once: a broken file, a conflict or a misbehaving
//! service is reported when it appears, not on every rebuild or request.

use std::collections::HashSet;

/// Distinct messages remembered; past this the memory starts over (so a
/// flood of distinct messages costs bounded memory and repeats some lines).
const CAP: usize = 4096;

#[derive(Debug, Default)]
pub struct LogOnce {
    seen: HashSet<String>,
}

impl LogOnce {
    /// Whether `message` is new (and so to be logged now).
    pub fn first(&mut self, message: &str) -> bool {
        if self.seen.contains(message) {
            return false;
        }
        if self.seen.len() >= CAP {
            self.seen.clear();
        }
        self.seen.insert(message.to_owned());
        true
    }

    /// Takes the full list of messages that hold now; returns those that did
    /// not hold before. A message that goes away and comes back is new again.
    pub fn update(&mut self, messages: Vec<String>) -> Vec<String> {
        let fresh = messages
            .iter()
            .filter(|m| !self.seen.contains(*m))
            .cloned()
            .collect();
        self.seen = messages.into_iter().collect();
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_reports_only_new_messages() {
        let mut log = LogOnce::default();
        assert_eq!(log.update(vec!["a".into(), "b".into()]), ["a", "b"]);
        assert!(log.update(vec!["a".into(), "b".into()]).is_empty());
        assert_eq!(log.update(vec!["b".into(), "c".into()]), ["c"]);
        assert_eq!(log.update(vec!["a".into()]), ["a"]);
    }

    #[test]
    fn first_reports_each_message_once_in_bounded_memory() {
        let mut log = LogOnce::default();
        assert!(log.first("x"));
        assert!(!log.first("x"));
        for i in 0..(CAP * 3) {
            log.first(&i.to_string());
        }
        assert!(log.seen.len() <= CAP);
    }
}
