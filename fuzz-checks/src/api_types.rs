//! The parameters of `api.rs` as the broker reads them out of a call (the
//! queries) and the module out of a reply (record and membership replies):
//! whatever decodes encodes to itself, the module's options are exactly the
//! flags the message set, and a record reply's record goes through the
//! record checks.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Debug;
use userdb_proto::api::{
    GroupQuery, LookupOptions, MembershipQuery, MembershipReply, RecordReply, UserQuery,
};

use crate::{assert_round_trip, records};

pub fn check(data: &[u8]) {
    let Ok(parameters) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(q) = decoded::<UserQuery>(&parameters) {
        assert_options(&q.options, &parameters);
    }
    if let Some(q) = decoded::<GroupQuery>(&parameters) {
        assert_options(&q.options, &parameters);
    }
    if let Some(q) = decoded::<MembershipQuery>(&parameters) {
        assert_options(&q.options, &parameters);
    }
    decoded::<MembershipReply>(&parameters);
    if let Some(reply) = decoded::<RecordReply>(&parameters) {
        records::check_user(&reply.record);
        records::check_group(&reply.record);
    }
}

fn decoded<T>(parameters: &Value) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = T::deserialize(parameters).ok()?;
    assert_round_trip(&value);
    Some(value)
}

/// A flag is set exactly when the parameters say `true` for it.
fn assert_options(options: &LookupOptions, parameters: &Value) {
    let flag = |key: &str| parameters.get(key) == Some(&Value::Bool(true));
    assert_eq!(options.caller_reads_files, flag("callerReadsFiles"));
    assert_eq!(options.dynamic_bypass, flag("dynamicBypass"));
}
