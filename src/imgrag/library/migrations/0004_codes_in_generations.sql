-- A folder's photos are now ranked by the 1-bit codes each published generation carries
-- (imgrag.library.dated), which every server holds in memory, so the copies' bits of 0003 are
-- read by no search. Dropping them takes a trigger off every write of a copy or a vector,
-- and 56 bytes off each entry of the path index, which an --in search still reads for the
-- folder's photo ids.
DROP TRIGGER copies_bits ON copies;
DROP TRIGGER photos_bits ON photos;
DROP FUNCTION imgrag_copy_bits();
DROP FUNCTION imgrag_photo_bits();
DROP INDEX copies_path;
ALTER TABLE copies DROP COLUMN bits;
CREATE INDEX copies_path ON copies (path text_pattern_ops) INCLUDE (photo);
