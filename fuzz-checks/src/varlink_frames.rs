//! `varlink::FrameBuffer`: the stream is cut at its NULs, however it is
//! split across pushes; no frame over the cap is ever handed out, the cap is
//! enforced only against a frame that really is over it, and no byte is lost
//! or handed out twice.
//!
//! Input: the cap (one byte), the chunking (one byte, see `chunks`), the stream.

use userdb_proto::varlink::{FrameBuffer, FrameError};

use crate::{chunks, Input};

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let cap = usize::from(input.byte());
    let chunking = input.byte();
    let stream = input.rest();

    let mut frames = FrameBuffer::new(cap);
    // Bytes of `stream` pushed so far, and handed out as frames (NULs included).
    let mut pushed = 0;
    let mut taken = 0;
    for piece in chunks(stream, chunking) {
        frames.push(piece);
        pushed += piece.len();
        loop {
            let held = &stream[taken..pushed];
            let next_len = held.iter().position(|&b| b == 0).unwrap_or(held.len());
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= cap,
                        "a frame of {} bytes, cap {cap}",
                        frame.len()
                    );
                    assert!(next_len < held.len(), "a frame before its NUL arrived");
                    assert_eq!(frame, &held[..next_len], "not the next frame of the stream");
                    taken += frame.len() + 1;
                }
                Ok(None) => {
                    assert_eq!(next_len, held.len(), "a whole frame held back");
                    assert!(held.len() <= cap, "{} bytes held, cap {cap}", held.len());
                    break;
                }
                Err(FrameError::TooLarge { cap: reported }) => {
                    assert_eq!(reported, cap);
                    assert!(
                        next_len > cap,
                        "a frame of {next_len} bytes refused, cap {cap}"
                    );
                    return;
                }
            }
            assert_eq!(frames.pending(), pushed - taken, "bytes lost or duplicated");
        }
        assert_eq!(frames.pending(), pushed - taken, "bytes lost or duplicated");
    }
}
