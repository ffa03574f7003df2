-- How a signal was made from its media, when not plainly: "trimmed" for a PDQ of
-- the picture inside uniform borders. Matches report it.
ALTER TABLE signal ADD COLUMN variant TEXT;
