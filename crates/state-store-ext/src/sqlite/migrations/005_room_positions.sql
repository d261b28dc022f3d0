-- The last position given out in each room's order of state events (by room).
CREATE TABLE room_position (
    room BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
