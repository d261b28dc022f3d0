-- Previews of restricted rooms: the ones we were sent (by room), and what we pushed of ours to
-- the members of their allowed rooms (by room).
CREATE TABLE received_preview (
    room BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE sent_preview (
    room BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
