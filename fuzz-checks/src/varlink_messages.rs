//! Varlink `Call` and `Reply` as both ends decode a frame: whatever decodes
//! is sent on unchanged by encoding it again, and the encoding is one frame.

use userdb_proto::varlink::{Call, Reply};

use crate::assert_round_trip;

pub fn check(data: &[u8]) {
    if let Ok(call) = serde_json::from_slice::<Call>(data) {
        assert_round_trip(&call);
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(data) {
        assert_round_trip(&reply);
    }
}
