//! A bound on the work spent explaining the client's machine's refusals.
//!
//! An explanation reads a copy of the refused event's key from the shared crypto store and
//! decrypts the event again. Any member can post refused events, so explanations are
//! remembered per event (an event rejected for a reason that may clear is scanned again, and
//! must not cost a new read each time) and at most [`READS_PER_WINDOW`] reads run per
//! [`WINDOW`]; past that, a refusal is recorded with the machine's own reason.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crypto_ext::RejectionReason;
use ruma::OwnedEventId;

/// Key reads allowed per [`WINDOW`] to explain refusals.
pub(super) const READS_PER_WINDOW: u32 = 10;
/// The window of [`READS_PER_WINDOW`].
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// Explanations remembered; the oldest is forgotten first.
pub(super) const REMEMBERED: usize = 1024;

/// What was explained, and how many reads the current window has used.
#[derive(Debug)]
pub(super) struct Explanations {
    explained: HashMap<OwnedEventId, Option<RejectionReason>>,
    order: VecDeque<OwnedEventId>,
    window_start: Instant,
    used: u32,
}

impl Explanations {
    pub(super) fn new(now: Instant) -> Self {
        Self { explained: HashMap::new(), order: VecDeque::new(), window_start: now, used: 0 }
    }

    /// The explanation found for `event_id` before (`Some(None)`: looked, nothing to add).
    pub(super) fn remembered(&self, event_id: &OwnedEventId) -> Option<Option<RejectionReason>> {
        self.explained.get(event_id).cloned()
    }

    /// Whether a read may run at `now`; if so, counts it.
    pub(super) fn may_read(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.used = 0;
        }
        if self.used >= READS_PER_WINDOW {
            return false;
        }
        self.used += 1;
        true
    }

    /// Remembers what explaining `event_id` found.
    pub(super) fn remember(&mut self, event_id: OwnedEventId, reason: Option<RejectionReason>) {
        if self.explained.insert(event_id.clone(), reason).is_none() {
            self.order.push_back(event_id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.explained.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::owned_event_id;

    use super::*;

    #[test]
    fn reads_are_bounded_per_window() {
        let start = Instant::now();
        let mut explanations = Explanations::new(start);
        let allowed = (0..READS_PER_WINDOW + 5).filter(|_| explanations.may_read(start)).count();
        assert_eq!(allowed, READS_PER_WINDOW as usize);
        assert!(explanations.may_read(start + WINDOW), "a new window allows reads again");
    }

    #[test]
    fn explanations_are_remembered_and_bounded() {
        let mut explanations = Explanations::new(Instant::now());
        let first = owned_event_id!("$first:example.org");
        explanations.remember(first.clone(), Some(RejectionReason::SenderDeviceUnknown));
        assert_eq!(
            explanations.remembered(&first),
            Some(Some(RejectionReason::SenderDeviceUnknown))
        );
        for i in 0..REMEMBERED {
            let id = OwnedEventId::try_from(format!("$e{i}:example.org")).unwrap();
            explanations.remember(id, None);
        }
        assert_eq!(explanations.remembered(&first), None, "the oldest is forgotten");
        assert_eq!(explanations.explained.len(), REMEMBERED);
    }
}
