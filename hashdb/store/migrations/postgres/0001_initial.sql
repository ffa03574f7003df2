-- The same schema as migrations/sqlite/0001_initial.sql, in PostgreSQL's types:
-- BIGINT identity ids, BYTEA hash values, TIMESTAMPTZ times, JSONB labels and details.

-- Members are platforms or trusted flaggers; keys belong to members.
CREATE TABLE member (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    trusted_flagger BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_key (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    member_id BIGINT NOT NULL REFERENCES member(id),
    secret_hash BYTEA NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- One contributed item; never its bytes.
CREATE TABLE media (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id BIGINT NOT NULL REFERENCES member(id),
    media_key TEXT,
    media_type TEXT NOT NULL,
    labels JSONB NOT NULL,
    note TEXT,
    source TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('active', 'pending', 'disputed', 'disabled', 'deleted')),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (id, member_id)  -- the target of signal's foreign key
);
CREATE UNIQUE INDEX media_member_key ON media(member_id, media_key)
    WHERE media_key IS NOT NULL AND status <> 'deleted';

-- member_id repeats the media's owner (the idempotency index needs it); one
-- composite foreign key keeps the two in step, and costs one check per row, not two
-- (the checks are most of a bulk import's time).
CREATE TABLE signal (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    media_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    type TEXT NOT NULL,
    value BYTEA NOT NULL,
    quality INTEGER,
    timestamp DOUBLE PRECISION,
    FOREIGN KEY (media_id, member_id) REFERENCES media(id, member_id)
);
CREATE INDEX signal_member_value ON signal(member_id, type, value);
CREATE INDEX signal_media ON signal(media_id);

-- Append-only log of what is matchable; indexes and replicas follow it. Writers
-- append under one advisory lock (see postgres.py), so seq order is commit order
-- and a follower reading `seq > cursor` never skips a row committed late.
CREATE TABLE change (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    signal_id BIGINT NOT NULL,
    type TEXT NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    media_id BIGINT NOT NULL REFERENCES media(id),
    member_id BIGINT NOT NULL REFERENCES member(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree')),
    reason TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX feedback_media ON feedback(media_id);

-- Audit trail: every state change and every match, never non-matching queries.
CREATE TABLE event (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    kind TEXT NOT NULL,
    member_id BIGINT,
    media_id BIGINT,
    owner_id BIGINT,
    details JSONB NOT NULL
);
CREATE INDEX event_member ON event(member_id, id);
CREATE INDEX event_owner ON event(owner_id, id);

-- Identity of this database, so an index snapshot is never applied to another one.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));
