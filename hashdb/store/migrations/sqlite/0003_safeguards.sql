-- Consortium safeguards (review, disputes, an accountable audit trail).
-- A deactivated member's keys stop working; its history stays.
ALTER TABLE member ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
-- Label corrections a member proposes with its feedback (JSON list, or NULL).
ALTER TABLE feedback ADD COLUMN labels TEXT;
-- Feedback with an id at or below this was settled by a resolution: only later
-- feedback can dispute the media again.
ALTER TABLE media ADD COLUMN feedback_floor INTEGER NOT NULL DEFAULT 0;
-- The key that acted ("console" for the operator at the command line).
ALTER TABLE event ADD COLUMN key_id TEXT;
CREATE INDEX event_at ON event(at);
CREATE INDEX event_kind ON event(kind, id);
CREATE INDEX event_media ON event(media_id, id);
CREATE INDEX media_status ON media(status, id);
CREATE INDEX feedback_member ON feedback(member_id, media_id);
-- The audit trail is append-only: nothing, not even the service, edits or deletes it.
CREATE TRIGGER event_no_update BEFORE UPDATE ON event
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER event_no_delete BEFORE DELETE ON event
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
