//! What every fuzz target asserts about one parser of `userdb-proto` or
//! of the broker.
//!
//! Each module's `check` takes the raw input and panics when an invariant
//! breaks. The cargo-fuzz targets in `fuzz/` call it under libFuzzer, and
//! `tests/corpus.rs` replays every file of `fuzz/corpus/<target>/` through
//! it on the stable toolchain, so a corpus input is checked by the same code
//! in both places.
//!
//! A new target: its module here and its line in `TARGETS`, a two-line
//! `fuzz/fuzz_targets/<name>.rs` and its line in `fuzz/Cargo.toml`, and a
//! seeded `fuzz/corpus/<name>/`. `tests/corpus.rs` fails until all exist.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use userdb_proto::varlink::encode;

pub mod api_types;
pub mod client_replies;
pub mod etc_files;
pub mod nsswitch;
pub mod records;
pub mod snapfile;
pub mod varlink_frames;
pub mod varlink_messages;

/// A fuzz target: its name (of the binary in `fuzz/` and of its corpus
/// directory) and its check.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "api_types",
        check: api_types::check,
    },
    Target {
        name: "client_replies",
        check: client_replies::check,
    },
    Target {
        name: "etc_files",
        check: etc_files::check,
    },
    Target {
        name: "nsswitch",
        check: nsswitch::check,
    },
    Target {
        name: "records",
        check: records::check,
    },
    Target {
        name: "snapfile",
        check: snapfile::check,
    },
    Target {
        name: "varlink_frames",
        check: varlink_frames::check,
    },
    Target {
        name: "varlink_messages",
        check: varlink_messages::check,
    },
];

/// Reads settings off the front of an input; past its end every byte is 0,
/// so every input is a valid one.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// `stream` cut into the pieces `recv` might return: one piece for
/// `chunking` 0, else pieces of 1 to `chunking` bytes in a fixed pseudo-random
/// sequence.
fn chunks(stream: &[u8], chunking: u8) -> Vec<&[u8]> {
    if chunking == 0 {
        return vec![stream];
    }
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut state = usize::from(chunking);
    while !rest.is_empty() {
        state = (state * 37 + 11) % 251;
        let len = (1 + state % usize::from(chunking)).min(rest.len());
        let (piece, tail) = rest.split_at(len);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// A message encoded the way both ends send it decodes to itself, and its
/// only NUL is the frame terminator.
fn assert_round_trip<T>(message: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(message);
    assert_eq!(
        bytes.iter().position(|&b| b == 0),
        Some(bytes.len() - 1),
        "the terminator must be the only NUL in {bytes:?}"
    );
    let back: T = match serde_json::from_slice(&bytes[..bytes.len() - 1]) {
        Ok(back) => back,
        Err(e) => panic!("{message:?} encodes to something it cannot decode: {e}"),
    };
    assert_eq!(&back, message, "changed by encoding and decoding again");
}
