-- The change log also says when a media's status or labels change while it stays
-- matchable (active <-> disputed, a relabelling): op 'update', one row per signal.
-- The indexes keep those signals; every replica forgets what it cached about them.
-- The same as migrations/sqlite/0004_change_update.sql.
ALTER TABLE change DROP CONSTRAINT change_op_check;
ALTER TABLE change ADD CONSTRAINT change_op_check CHECK (op IN ('add', 'remove', 'update'));
