//! Varlink framing: every message is one JSON object followed by a NUL byte.
//!
//! `FrameBuffer` collects bytes from a stream and hands out whole frames,
//! refusing any frame larger than its cap so that neither end can be made to
//! buffer without bound.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A method call as sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub method: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    /// The client accepts several replies; all but the last carry `continues`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
    /// The client wants no reply at all.
    #[serde(default, skip_serializing_if = "is_false")]
    pub oneway: bool,
}

/// A reply: either `parameters` or an `error` name (with optional parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub continues: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(parameters: Value, continues: bool) -> Self {
        Reply {
            parameters: Some(parameters),
            continues,
            error: None,
        }
    }

    pub fn error(name: &str) -> Self {
        Reply {
            parameters: Some(Value::Object(Default::default())),
            continues: false,
            error: Some(name.to_owned()),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Errors defined by the Varlink core interface.
pub mod errors {
    pub const METHOD_NOT_FOUND: &str = "org.varlink.service.MethodNotFound";
    pub const INTERFACE_NOT_FOUND: &str = "org.varlink.service.InterfaceNotFound";
    pub const INVALID_PARAMETER: &str = "org.varlink.service.InvalidParameter";
    pub const PERMISSION_DENIED: &str = "org.varlink.service.PermissionDenied";
    pub const EXPECTED_MORE: &str = "org.varlink.service.ExpectedMore";
}

/// Serialises a message and appends the NUL terminator. serde_json escapes
/// U+0000 inside strings, so the only raw NUL in the output is the terminator.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these plain data types into a Vec cannot fail: there are no
    // maps with non-string keys and no I/O errors.
    let mut out = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    out.push(0);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame grew past the cap before its NUL arrived.
    TooLarge { cap: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { cap } => write!(f, "message larger than {cap} bytes"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Accumulates stream bytes and yields NUL-terminated frames.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Bytes before this offset were handed out. They are dropped in one
    /// move at the next push, not one move per frame, so a chunk holding
    /// many small frames costs linear time.
    start: usize,
    /// Bytes from `start` up to this offset are known to hold no NUL.
    scanned: usize,
    cap: usize,
}

impl FrameBuffer {
    pub fn new(cap: usize) -> Self {
        FrameBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            cap,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame without its NUL, `Ok(None)` if more bytes are
    /// needed, or an error once the unfinished frame exceeds the cap.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match self.buf[self.scanned..].iter().position(|&b| b == 0) {
            Some(offset) => {
                let end = self.scanned + offset;
                if end - self.start > self.cap {
                    return Err(FrameError::TooLarge { cap: self.cap });
                }
                let frame = self.buf[self.start..end].to_vec();
                self.start = end + 1;
                self.scanned = self.start;
                Ok(Some(frame))
            }
            None => {
                self.scanned = self.buf.len();
                if self.pending() > self.cap {
                    Err(FrameError::TooLarge { cap: self.cap })
                } else {
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_across_pushes() {
        let mut fb = FrameBuffer::new(64);
        fb.push(b"{\"a\":1}\0{\"b\"");
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(fb.next_frame().unwrap(), None);
        fb.push(b":2}\0");
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"{\"b\":2}");
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn many_frames_in_one_push_and_one_split_across_the_next() {
        let mut fb = FrameBuffer::new(8);
        fb.push(b"a\0bb\0\0ccc");
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"a");
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"bb");
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"");
        assert_eq!(fb.next_frame().unwrap(), None);
        assert_eq!(fb.pending(), 3);
        fb.push(b"cc\0d");
        assert_eq!(fb.pending(), 7);
        assert_eq!(fb.next_frame().unwrap().unwrap(), b"ccccc");
        assert_eq!(fb.next_frame().unwrap(), None);
        assert_eq!(fb.pending(), 1);
        fb.push(b"ddddddd");
        assert_eq!(fb.next_frame().unwrap(), None);
        fb.push(b"d");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { cap: 8 }));
    }

    #[test]
    fn refuses_oversized_frame_without_nul() {
        let mut fb = FrameBuffer::new(8);
        fb.push(b"0123456789");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { cap: 8 }));
    }

    #[test]
    fn refuses_oversized_frame_with_nul() {
        let mut fb = FrameBuffer::new(4);
        fb.push(b"0123456\0");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { cap: 4 }));
    }

    #[test]
    fn encode_escapes_embedded_nul() {
        let bytes = encode(&Reply::error("x\0y"));
        assert_eq!(bytes.iter().filter(|&&b| b == 0).count(), 1);
        assert_eq!(*bytes.last().unwrap(), 0);
    }

    #[test]
    fn floats_survive_decoding_and_encoding_again() {
        for text in [
            "{\"parameters\":7773E276}",
            "{\"parameters\":333333333333333333333333333333333333333333.3}",
        ] {
            let reply: Reply = serde_json::from_str(text).unwrap();
            let bytes = encode(&reply);
            let back: Reply = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
            assert_eq!(back, reply, "{text}");
        }
    }

    #[test]
    fn call_round_trip() {
        let call = Call {
            method: "io.systemd.UserDatabase.GetUserRecord".into(),
            parameters: serde_json::json!({"userName": "root"}),
            more: true,
            oneway: false,
        };
        let bytes = encode(&call);
        let back: Call = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(back, call);
    }
}
