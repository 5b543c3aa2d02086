#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hostscope_fuzz::run("unwind", data));
