-- The change log also says when a media's status or labels change while it stays
-- matchable (active <-> disputed, a relabelling): op 'update', one row per signal.
-- The indexes keep those signals; every replica forgets what it cached about them.
-- SQLite cannot alter a CHECK: the table is rebuilt, seq values kept (the
-- AUTOINCREMENT counter follows the largest copied seq; the log is never trimmed).
CREATE TABLE change_new (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove', 'update')),
    signal_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);
INSERT INTO change_new (seq, op, signal_id, type, value)
    SELECT seq, op, signal_id, type, value FROM change ORDER BY seq;
DROP TABLE change;
ALTER TABLE change_new RENAME TO change;
