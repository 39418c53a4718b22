#![no_main]
//! Any byte string must decode to a message or a Data error; never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cutover::capture::pgoutput::decode(&bytes::Bytes::copy_from_slice(data));
});
