-- Sessions whose keys a received bundle withheld, with the code, so a client can say why a past
-- message stays unreadable.
CREATE TABLE withheld_session (
    session BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
