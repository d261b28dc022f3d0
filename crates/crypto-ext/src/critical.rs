//! State types that are never encrypted, and never honoured when they arrive encrypted.
//!
//! Servers need these to authorise events (MSC3414, MSC4362), and the review of MSC3414 adds
//! `m.room.server_acl` and `m.room.tombstone`. The same list guards the send side (refuse to
//! encrypt) and the receive side (record as rejected, never apply).

/// The critical state types (DESIGN section 5).
pub const CRITICAL_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.member",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.third_party_invite",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.tombstone",
];

/// State types that are not critical but are only honoured in plaintext: the homeserver checks
/// them when they are sent in clear, and encrypting them would hide nothing from it.
///
/// `m.room.canonical_alias`: the server refuses a plaintext canonical alias that its room
/// directory does not map to the room; an encrypted one would bypass that check (a member could
/// make the room claim any alias), while the alias itself is public in the directory anyway.
pub const PLAINTEXT_ONLY_STATE_TYPES: &[&str] = &["m.room.canonical_alias"];

/// Whether `event_type` is critical state.
pub fn is_critical(event_type: &str) -> bool {
    CRITICAL_STATE_TYPES.contains(&event_type)
}

/// Whether `event_type` is only honoured in plaintext ([`PLAINTEXT_ONLY_STATE_TYPES`]).
pub fn is_plaintext_only(event_type: &str) -> bool {
    PLAINTEXT_ONLY_STATE_TYPES.contains(&event_type)
}

/// Whether `event_type` is never encrypted, never honoured encrypted: critical or
/// plaintext-only.
pub fn is_never_encrypted(event_type: &str) -> bool {
    is_critical(event_type) || is_plaintext_only(event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_disjoint_and_cover_the_design() {
        for t in PLAINTEXT_ONLY_STATE_TYPES {
            assert!(!is_critical(t));
            assert!(is_never_encrypted(t));
        }
        assert!(is_never_encrypted("m.room.power_levels"));
        assert!(!is_never_encrypted("m.room.name"));
        assert_eq!(CRITICAL_STATE_TYPES.len(), 10);
        assert!(is_critical("m.room.tombstone"));
        assert!(is_critical("m.room.server_acl"));
        assert!(!is_critical("m.room.name"));
        assert!(!is_critical("m.room.topic"));
        // Exact match only: a custom type that merely starts with a critical name is not critical.
        assert!(!is_critical("m.room.member.extra"));
    }
}
