#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| userdb_fuzz_checks::etc_files::check(data));
