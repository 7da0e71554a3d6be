//! A deliberately plain Varlink client for talking to the broker directly:
//! independent of the project's own client, so the wire contract is checked
//! from the outside, and able to send malformed bytes.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What came back on one connection.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Every NUL-terminated frame received, parsed (unparsable ones as null).
    pub replies: Vec<Value>,
    /// The broker closed the connection.
    pub closed: bool,
    /// The time limit passed with the connection still open and the last
    /// reply (if any) still announcing more.
    pub timed_out: bool,
}

/// Sends `bytes` as they are and reads replies until one arrives without
/// `continues`, the broker closes, or `limit` passes.
pub fn exchange(socket: &Path, bytes: &[u8], limit: Duration) -> Exchange {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let _ = stream.set_write_timeout(Some(limit));
    // The broker may close before taking everything (an oversized request):
    // what it answered up to then is still the result.
    let _ = stream.write_all(bytes);
    read_replies(&mut stream, limit)
}

/// Reads replies from `stream` as [`exchange`] does.
fn read_replies(stream: &mut UnixStream, limit: Duration) -> Exchange {
    let started = Instant::now();
    let mut result = Exchange::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            result.timed_out = true;
            return result;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => {
                result.closed = true;
                return result;
            }
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                result.closed = true;
                return result;
            }
        }
        while let Some(end) = pending.iter().position(|&b| b == 0) {
            let frame: Vec<u8> = pending.drain(..=end).take(end).collect();
            let reply: Value = serde_json::from_slice(&frame).unwrap_or_default();
            let last = !reply["continues"].as_bool().unwrap_or(false);
            result.replies.push(reply);
            if last {
                return result;
            }
        }
    }
}

/// One well-formed call; `more` asks for every record.
pub fn call(socket: &Path, method: &str, parameters: Value, more: bool) -> Exchange {
    let mut message = json!({ "method": method, "parameters": parameters });
    if more {
        message["more"] = json!(true);
    }
    let mut bytes = message.to_string().into_bytes();
    bytes.push(0);
    exchange(socket, &bytes, Duration::from_secs(10))
}
