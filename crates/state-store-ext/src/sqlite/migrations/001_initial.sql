-- Keys are BLOBs: keyed BLAKE3 hashes when the store has a passphrase, length-prefixed logical
-- keys otherwise. Values are sealed (encrypted) records that also carry their logical key.

CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- Every authorised event of every slot.
CREATE TABLE state_event (
    room BLOB NOT NULL,
    slot BLOB NOT NULL,
    event BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (slot, event)
);
CREATE INDEX state_event_room ON state_event (room);

-- The winner of each slot.
CREATE TABLE current_state (
    room BLOB NOT NULL,
    slot BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, slot)
);

CREATE TABLE rejected_event (
    room BLOB NOT NULL,
    event BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, event)
);

CREATE TABLE pending_event (
    session BLOB NOT NULL,
    event BLOB NOT NULL,
    room BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (session, event)
);

CREATE TABLE session_event (
    key BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE outbound_session (
    room BLOB NOT NULL,
    slot BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, slot)
);

CREATE TABLE inbound_session (
    session BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE pending_bundle (
    room BLOB NOT NULL,
    sender BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, sender)
);

CREATE TABLE key_request (
    room BLOB NOT NULL,
    session BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room, session)
);
