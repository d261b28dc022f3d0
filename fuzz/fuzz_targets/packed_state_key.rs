//! A packed state key (`{type}:{state_key}`, the outer `state_key` of an encrypted state event):
//! parsed, then compared with every slot it could pack (a split at each `:`), and with a slot
//! made of the input's two halves: `matches` holds exactly when the slot packs to the key.
#![no_main]

use crypto_ext::{PackedStateKey, StateSlot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let Ok(packed) = PackedStateKey::parse(data) else { return };
    assert_eq!(packed.as_str(), data);
    for (at, _) in data.match_indices(':') {
        let slot = StateSlot::new(&data[..at], &data[at + 1..]);
        assert!(packed.matches(&slot), "{slot}");
        if !slot.event_type.is_empty() {
            assert_eq!(slot.packed().ok(), Some(packed.clone()));
        }
    }
    let middle = data.char_indices().map(|(i, _)| i).nth(data.chars().count() / 2).unwrap_or(0);
    let slot = StateSlot::new(&data[..middle], &data[middle..]);
    assert_eq!(packed.matches(&slot), format!("{}:{}", slot.event_type, slot.state_key) == data);
});
