-- Retrying every undecryptable event of a room (after a restart, a join, a bundle) looks pending
-- events up by room, which version 1 could only do with a full scan.
CREATE INDEX pending_event_room ON pending_event (room);
