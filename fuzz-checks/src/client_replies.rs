//! The client's reply path (`client::ReplyReader`: frames, caps, decoding,
//! error replies), fed a stream as it would arrive on the socket. However the
//! stream is split, the outcomes are the same; each reply or error is what
//! its frame says; and a frame is refused as oversized only when it, or the
//! call's total, is over its cap.
//!
//! Input: the frame cap (one byte, ×4), the total cap (one byte, ×16), the
//! chunking (one byte, see `chunks`), the stream. A reply without
//! `continues` ends a call and the next one starts; the first error ends
//! the connection.

use userdb_proto::client::{ClientError, Limits, ReplyReader};
use userdb_proto::varlink::Reply;

use crate::{chunks, Input};

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let limits = Limits {
        max_frame: usize::from(input.byte()) * 4,
        max_total: usize::from(input.byte()) * 16,
    };
    let chunking = input.byte();
    let stream = input.rest();

    let chunked = outcomes(limits, &chunks(stream, chunking));
    assert_eq!(
        outcomes(limits, &[stream]),
        chunked,
        "depends on how the stream was split"
    );

    let mut total = 0;
    for (outcome, frame) in chunked.iter().zip(stream.split(|&b| b == 0)) {
        total += frame.len() + 1;
        let within = frame.len() <= limits.max_frame && total <= limits.max_total;
        let decoded = serde_json::from_slice::<Reply>(frame).ok();
        match outcome {
            Ok(reply) => {
                assert!(within, "a reply over a cap: {reply:?}");
                assert_eq!(decoded.as_ref(), Some(reply));
                assert_eq!(reply.error, None);
                if !reply.continues {
                    total = 0;
                }
            }
            Err(ClientError::Remote(name)) => {
                assert!(within, "an error reply over a cap: {name}");
                assert_eq!(decoded.and_then(|r| r.error).as_ref(), Some(name));
            }
            Err(ClientError::Protocol(what)) => {
                assert!(within, "a protocol error over a cap: {what}");
                assert_eq!(decoded, None, "{what}");
            }
            Err(ClientError::Oversized) => assert!(!within, "{} bytes refused", frame.len()),
            Err(other) => panic!("a reply cannot be {other:?}"),
        }
    }
}

/// Every reply until the stream runs out or the first error.
fn outcomes(limits: Limits, pieces: &[&[u8]]) -> Vec<Result<Reply, ClientError>> {
    let mut reader = ReplyReader::new(limits);
    let mut seen = Vec::new();
    for piece in pieces {
        reader.push(piece);
        loop {
            match reader.next_reply() {
                Ok(Some(reply)) => {
                    if !reply.continues {
                        reader.begin_call();
                    }
                    seen.push(Ok(reply));
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(Err(e));
                    return seen;
                }
            }
        }
    }
    seen
}
