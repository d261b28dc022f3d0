//! A tampered row of the SQLite store (any bytes where a value was): opened through the codec,
//! encrypted (envelope, cipher, logical-key check) or plain (JSON), as each record type. The
//! first byte picks the codec and the type; a typed error is the answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_store_ext::fuzzing::open_stored_value;

fuzz_target!(|data: &[u8]| {
    let Some((first, bytes)) = data.split_first() else { return };
    let _ = open_stored_value(first & 0x80 != 0, first & 0x7f, bytes);
});
