//! The plaintext of a room-key bundle, as it comes out of the attachment decryption (any bytes):
//! parsed and filtered to the room, then each entry imported as a state session, as the
//! receiver does. Entries of other rooms never come through.
#![no_main]

use crypto_ext::{InboundStateSession, KeyOrigin, bundle};
use libfuzzer_sys::fuzz_target;
use ruma::room_id;

fuzz_target!(|data: &[u8]| {
    let room = room_id!("!room:example.org");
    let Ok(opened) = bundle::open_plaintext(data, room) else { return };
    assert!(opened.room_keys.iter().all(|key| key.room_id == room));
    let origin = KeyOrigin::Bundle { shared_by: "@alice:example.org".try_into().expect("user") };
    for key in opened.room_keys {
        let key = bundle::exported_room_key(key);
        if let Ok(session) = InboundStateSession::import(room, &key, origin.clone()) {
            assert_eq!(session.session_id(), key.session_id);
            let _ = InboundStateSession::from_pickle(session.pickle());
        }
    }
});
