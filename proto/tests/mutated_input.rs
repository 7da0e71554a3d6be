//! Every parser that reads bytes from outside, fed 20,000 seeded mutations of
//! valid input each (bit flips, byte insertions and deletions, splices of
//! separators, NUL and oversized runs). None may panic, and whatever a parser
//! accepts must hold the invariants the packing code relies on. Deterministic:
//! a failure names the seed that found it.

use serde_json::Value;
use userdb_proto::names::{valid_gecos, valid_hash, valid_id, valid_name, valid_path};
use userdb_proto::nsswitch;
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::varlink::{Call, FrameBuffer, Reply};

const ROUNDS: u64 = 20_000;

/// xorshift64*: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the formats under test.
const INTERESTING: &[&[u8]] = &[
    b":",
    b",",
    b"\0",
    b"\n",
    b"\"",
    b"\\u0000",
    b"-1",
    b"4294967295",
    b"65535",
    b"[",
    b"]",
    b"{",
    b"}",
    b"#",
    b"=",
    b"!",
    b"/",
    b" ",
    b"\xff",
    b"1e999",
    b"null",
];

fn mutate(seed: u64, input: &[u8]) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let end = (at + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 => {
                let run = vec![b'a'; rng.below(5000)];
                out.splice(at..at, run);
            }
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out
}

fn for_each_mutation(input: &[u8], mut check: impl FnMut(u64, &[u8])) {
    for seed in 0..ROUNDS {
        check(seed, &mutate(seed, input));
    }
}

const USER: &str = r#"{"userName":"alice","uid":60100,"gid":100,"realName":"Alice","homeDirectory":"/home/alice","shell":"/bin/bash","lastPasswordChangeUSec":1700000000000000,"privileged":{"hashedPassword":["$6$salt$hash"]}}"#;
const GROUP: &str = r#"{"groupName":"wheel","gid":10,"members":["alice","bob"],"administrators":["alice"],"privileged":{"hashedPassword":["!"]}}"#;

#[test]
fn user_records_accepted_after_mutation_are_still_valid() {
    for_each_mutation(USER.as_bytes(), |seed, bytes| {
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        if let Ok(user) = UserRecord::from_json(&value) {
            assert!(valid_name(&user.name), "seed {seed}: {user:?}");
            assert!(valid_id(user.uid) && valid_id(user.gid), "seed {seed}");
            assert!(valid_gecos(&user.gecos), "seed {seed}: {user:?}");
            assert!(
                valid_path(&user.home) && valid_path(&user.shell),
                "seed {seed}"
            );
            if let Some(hash) = user.shadow.and_then(|s| s.hashed_password) {
                assert!(valid_hash(&hash), "seed {seed}: {hash:?}");
            }
        }
    });
}

#[test]
fn group_records_accepted_after_mutation_are_still_valid() {
    for_each_mutation(GROUP.as_bytes(), |seed, bytes| {
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        if let Ok(group) = GroupRecord::from_json(&value) {
            assert!(valid_name(&group.name), "seed {seed}: {group:?}");
            assert!(valid_id(group.gid), "seed {seed}");
            assert!(group.members.iter().all(|m| valid_name(m)), "seed {seed}");
        }
    });
}

#[test]
fn varlink_messages_never_panic_and_frames_respect_the_cap() {
    let call = br#"{"method":"io.userdb.Broker.GetUserRecord","parameters":{"userName":"alice","service":"io.userdb.Broker"},"more":true}"#;
    let reply = br#"{"parameters":{"record":{"userName":"alice","uid":1},"incomplete":false},"continues":true}"#;
    for input in [&call[..], &reply[..]] {
        for_each_mutation(input, |seed, bytes| {
            let _ = serde_json::from_slice::<Call>(bytes);
            let _ = serde_json::from_slice::<Reply>(bytes);
            let cap = 256;
            let mut frames = FrameBuffer::new(cap);
            for chunk in bytes.chunks(1 + (seed as usize % 7)) {
                frames.push(chunk);
                while let Ok(Some(frame)) = frames.next_frame() {
                    assert!(frame.len() <= cap, "seed {seed}: frame over the cap");
                    assert!(!frame.contains(&0), "seed {seed}: NUL inside a frame");
                }
            }
        });
    }
}

#[test]
fn nsswitch_lines_never_panic_and_keep_their_shape() {
    let text = b"passwd: files broker\ngroup: files [SUCCESS=merge !notfound=return] broker\nshadow: files systemd # x\n";
    for_each_mutation(text, |seed, bytes| {
        let text = String::from_utf8_lossy(bytes);
        for line in nsswitch::parse(&text) {
            assert!(!line.database.is_empty(), "seed {seed}");
            assert!(!line.database.contains(char::is_whitespace), "seed {seed}");
            for entry in &line.entries {
                assert!(!entry.service.contains(char::is_whitespace), "seed {seed}");
            }
        }
    });
}
