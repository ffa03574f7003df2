-- Consortium safeguards: the same as migrations/sqlite/0003_safeguards.sql.
ALTER TABLE member ADD COLUMN active BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE feedback ADD COLUMN labels JSONB;
ALTER TABLE media ADD COLUMN feedback_floor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event ADD COLUMN key_id TEXT;
CREATE INDEX event_at ON event(at);
CREATE INDEX event_kind ON event(kind, id);
CREATE INDEX event_media ON event(media_id, id);
CREATE INDEX media_status ON media(status, id);
CREATE INDEX feedback_member ON feedback(member_id, media_id);
-- The audit trail is append-only: nothing, not even the service, edits or deletes it.
CREATE FUNCTION event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END $$;
CREATE TRIGGER event_append_only BEFORE UPDATE OR DELETE ON event
    FOR EACH ROW EXECUTE FUNCTION event_append_only();
CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON event
    FOR EACH STATEMENT EXECUTE FUNCTION event_append_only();
