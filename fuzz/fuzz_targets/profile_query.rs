#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hostscope_fuzz::run("profile_query", data));
