#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| userdb_fuzz_checks::nsswitch::check(data));
