-- Members are platforms or trusted flaggers; keys belong to members.
CREATE TABLE member (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    trusted_flagger INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE api_key (
    id INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    member_id INTEGER NOT NULL REFERENCES member(id),
    secret_hash BLOB NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

-- One contributed item; never its bytes.
CREATE TABLE media (
    id INTEGER PRIMARY KEY,
    member_id INTEGER NOT NULL REFERENCES member(id),
    media_key TEXT,
    media_type TEXT NOT NULL,
    labels TEXT NOT NULL,
    note TEXT,
    source TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX media_member_key ON media(member_id, media_key)
    WHERE media_key IS NOT NULL AND status != 'deleted';

CREATE TABLE signal (
    id INTEGER PRIMARY KEY,
    media_id INTEGER NOT NULL REFERENCES media(id),
    member_id INTEGER NOT NULL REFERENCES member(id),
    type TEXT NOT NULL,
    value BLOB NOT NULL,
    quality INTEGER,
    timestamp REAL
);
CREATE INDEX signal_member_value ON signal(member_id, type, value);
CREATE INDEX signal_media ON signal(media_id);

-- Append-only log of what is matchable; indexes and replicas follow it.
CREATE TABLE change (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    signal_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    media_id INTEGER NOT NULL REFERENCES media(id),
    member_id INTEGER NOT NULL REFERENCES member(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree')),
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX feedback_media ON feedback(media_id);

-- Audit trail: every state change and every match, never non-matching queries.
CREATE TABLE event (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    member_id INTEGER,
    media_id INTEGER,
    owner_id INTEGER,
    details TEXT NOT NULL
);
CREATE INDEX event_member ON event(member_id, id);
CREATE INDEX event_owner ON event(owner_id, id);

-- Identity of this database, so an index snapshot is never applied to another one.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
