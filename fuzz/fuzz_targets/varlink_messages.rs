#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| userdb_fuzz_checks::varlink_messages::check(data));
