-- Bundles announced to invitees whose invite has not gone through (by room and invitee).
CREATE TABLE sent_bundle (
    key BLOB PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
