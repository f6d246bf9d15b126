-- Keep each photo's vector in its row. A 384-dimension vector (1.5 kB) and the description's
-- texts pass PostgreSQL's 2 kB TOAST threshold, and the vector, stored EXTERNAL, went out of
-- line: every distance computed from the row (the exact search a selective filter uses, the
-- scores of the candidates) paid a TOAST index lookup. MAIN compresses or moves the texts out
-- first and the vector only as the last resort (a vector too big for a page). Rows written
-- before this keep their vector out of line until they are written again.
ALTER TABLE photos ALTER COLUMN embedding SET STORAGE MAIN;

-- An --in filter reads the ids of the photos with a copy under the folder: with the photo id in
-- the path index, that is an index-only scan, not a visit to every copy's page (10,000 pages
-- for a folder of 1% of a million photos, written in any order).
DROP INDEX copies_path;
CREATE INDEX copies_path ON copies (path text_pattern_ops) INCLUDE (photo);
