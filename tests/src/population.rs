//! Large synthetic databases, written fast: `/etc` lines built in memory and
//! written once, drop-in trees written by a few threads of the test process
//! (never one process per file), so that a fixture of 614,000 files costs
//! seconds, not minutes.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fixture::{DropinDir, Fixture};

/// The first uid and gid of generated entries, far from the fixture's own.
pub const FIRST_ID: u32 = 200_000;

/// A population of drop-in users, groups and memberships in the proportions
/// of a large fleet host: 1.05 groups and 2.04 memberships per user; each
/// user and group is a `NAME.*` file plus its `ID.*` link, so a population
/// of `users` is `6.14 × users` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Population {
    pub users: u32,
    pub groups: u32,
    pub memberships: u32,
}

impl Population {
    pub fn with_users(users: u32) -> Population {
        Population {
            users,
            groups: users / 20 * 21,
            memberships: users / 25 * 51,
        }
    }

    /// The population whose files number about `files`.
    pub fn with_files(files: u32) -> Population {
        Population::with_users(files / 614 * 100)
    }

    /// How many files [`Population::write`] creates.
    pub fn files(&self) -> u64 {
        2 * u64::from(self.users) + 2 * u64::from(self.groups) + u64::from(self.memberships)
    }

    pub fn user_name(i: u32) -> String {
        format!("pu{i}")
    }

    pub fn group_name(i: u32) -> String {
        format!("pg{i}")
    }

    /// The passwd line the broker serves for user `i`.
    pub fn passwd_line(i: u32) -> String {
        let id = FIRST_ID + i;
        let name = Self::user_name(i);
        format!("{name}:x:{id}:{id}:Population User {i}:/home/{name}:/bin/bash")
    }

    fn user_record(i: u32) -> String {
        let id = FIRST_ID + i;
        let name = Self::user_name(i);
        serde_json::json!({
            "userName": name, "uid": id, "gid": id, "realName": format!("Population User {i}"),
            "homeDirectory": format!("/home/{name}"), "shell": "/bin/bash",
        })
        .to_string()
    }

    fn group_record(i: u32) -> String {
        serde_json::json!({ "groupName": Self::group_name(i), "gid": FIRST_ID + i }).to_string()
    }

    /// Membership `k`: user `k mod users` in a group next to its own, a
    /// different one in each round, so that no pair repeats.
    fn membership(&self, k: u32) -> (u32, u32) {
        let user = k % self.users;
        let round = k / self.users;
        (user, (user + round + 1) % self.groups.max(1))
    }

    /// Writes every file into `dir` of `fixture`; returns how long it took.
    pub fn write(&self, fixture: &Fixture, dir: DropinDir) -> Duration {
        let started = Instant::now();
        let base = fixture.root().join(dir.relative());
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        std::thread::scope(|scope| {
            for t in 0..threads as u32 {
                let base = &base;
                scope.spawn(move || self.write_share(base, t, threads as u32));
            }
        });
        started.elapsed()
    }

    /// Every `stride`-th entry of each kind, from `first`.
    fn write_share(&self, dir: &Path, first: u32, stride: u32) {
        let write = |name: &str, content: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        };
        let link = |name: String, target: &str| {
            let path: PathBuf = dir.join(name);
            symlink(target, &path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        };
        for i in (first..self.users).step_by(stride as usize) {
            let file = format!("{}.user", Self::user_name(i));
            write(&file, Self::user_record(i).as_bytes());
            link(format!("{}.user", FIRST_ID + i), &file);
        }
        for i in (first..self.groups).step_by(stride as usize) {
            let file = format!("{}.group", Self::group_name(i));
            write(&file, Self::group_record(i).as_bytes());
            link(format!("{}.group", FIRST_ID + i), &file);
        }
        for k in (first..self.memberships).step_by(stride as usize) {
            let (user, group) = self.membership(k);
            let file = format!(
                "{}:{}.membership",
                Self::user_name(user),
                Self::group_name(group)
            );
            write(&file, b"{}");
        }
    }
}

/// `count` passwd lines `NAMEi:x:ID:ID:...`, ids from [`FIRST_ID`].
pub fn passwd_lines(prefix: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| {
            let id = FIRST_ID + i;
            format!("{prefix}{i}:x:{id}:{id}:Generated {i}:/home/{prefix}{i}:/bin/bash")
        })
        .collect()
}
