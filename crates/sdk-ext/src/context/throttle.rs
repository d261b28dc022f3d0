//! Which device lookups asked the homeserver lately, so background lookups ask once a while.
//!
//! A background lookup asks the homeserver the same again only after [`ASK_AGAIN_AFTER`].

use std::{
    collections::HashMap,
    sync::Mutex as StdMutex,
    time::{Duration, Instant},
};

use ruma::OwnedUserId;

/// How long a query made for a lookup also answers the same lookup made later.
pub(super) const ASK_AGAIN_AFTER: Duration = Duration::from_secs(300);

/// When a lookup that finds nothing in the crypto store asks the homeserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Every time: lookups made for the user's own action (an invite).
    Always,
    /// At most once per [`ASK_AGAIN_AFTER`] for the same lookup: lookups made by background
    /// work or on input from others, which could otherwise query the homeserver on every sync
    /// or every forged message.
    Throttled,
}

/// What a lookup looked for: all of a user's devices, or one device of theirs (by device ID or
/// Curve25519 key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Lookup {
    pub(super) user_id: OwnedUserId,
    pub(super) device: Option<String>,
}

/// The throttled lookups that asked the homeserver, with when they did.
#[derive(Debug, Default)]
pub(crate) struct AskedLookups {
    asked: StdMutex<HashMap<Lookup, Instant>>,
}

impl AskedLookups {
    /// Whether `lookup` may ask the homeserver at `now`; if so, remembers that it did. Lookups
    /// older than [`ASK_AGAIN_AFTER`] are forgotten, so the map holds at most the lookups of
    /// that long.
    pub(super) fn may_ask(&self, ask: Ask, lookup: Lookup, now: Instant) -> bool {
        if ask == Ask::Always {
            return true;
        }
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.retain(|_, at| now.saturating_duration_since(*at) < ASK_AGAIN_AFTER);
        if asked.contains_key(&lookup) {
            return false;
        }
        asked.insert(lookup, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn lookup(device: Option<&str>) -> Lookup {
        Lookup {
            user_id: user_id!("@puppet:example.org").to_owned(),
            device: device.map(Into::into),
        }
    }

    #[test]
    fn a_throttled_lookup_asks_once_per_period() {
        let asked = AskedLookups::default();
        let start = Instant::now();
        assert!(asked.may_ask(Ask::Throttled, lookup(None), start));
        assert!(!asked.may_ask(Ask::Throttled, lookup(None), start + Duration::from_secs(1)));
        assert!(!asked.may_ask(
            Ask::Throttled,
            lookup(None),
            start + ASK_AGAIN_AFTER - Duration::from_millis(1)
        ));
        assert!(asked.may_ask(Ask::Throttled, lookup(None), start + ASK_AGAIN_AFTER));
    }

    #[test]
    fn lookups_are_throttled_separately() {
        let asked = AskedLookups::default();
        let now = Instant::now();
        assert!(asked.may_ask(Ask::Throttled, lookup(None), now));
        // A device nobody looked for yet is asked for at once, even right after its user.
        assert!(asked.may_ask(Ask::Throttled, lookup(Some("NEWDEVICE")), now));
        assert!(asked.may_ask(Ask::Throttled, lookup(Some("OTHERDEVICE")), now));
        assert!(!asked.may_ask(Ask::Throttled, lookup(Some("NEWDEVICE")), now));
    }

    #[test]
    fn an_explicit_lookup_always_asks_and_is_not_remembered() {
        let asked = AskedLookups::default();
        let now = Instant::now();
        assert!(asked.may_ask(Ask::Always, lookup(None), now));
        assert!(asked.may_ask(Ask::Always, lookup(None), now));
        // Explicit lookups leave the throttled ones alone.
        assert!(asked.may_ask(Ask::Throttled, lookup(None), now));
    }

    #[test]
    fn old_lookups_are_forgotten() {
        let asked = AskedLookups::default();
        let start = Instant::now();
        for n in 0..100 {
            assert!(asked.may_ask(Ask::Throttled, lookup(Some(&format!("FORGED{n}"))), start));
        }
        assert!(asked.may_ask(Ask::Throttled, lookup(None), start + ASK_AGAIN_AFTER));
        assert_eq!(asked.asked.lock().unwrap().len(), 1);
    }
}
