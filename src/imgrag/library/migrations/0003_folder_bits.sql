-- A folder's photos, searched by meaning without visiting their rows. Each copy carries its
-- photo's vector quantised to one bit a dimension (pgvector's binary_quantize: 48 bytes for
-- 384 dimensions), and the path index carries it too: an --in search reads the folder's
-- copies from the index alone, ranks them by Hamming distance, and scores exactly only the
-- few hundred nearest (StoreGeneration._folder_nearest). Reading every photo of a folder
-- from its 1.5 kB row (a folder's photos lie anywhere in the table) cost most of a filtered
-- search. Triggers keep the bits true whoever writes a copy or a vector.
ALTER TABLE copies ADD COLUMN bits bit varying;

CREATE FUNCTION imgrag_copy_bits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.bits := (SELECT binary_quantize(p.embedding) FROM photos p WHERE p.id = NEW.photo);
    RETURN NEW;
END $$;
CREATE TRIGGER copies_bits BEFORE INSERT OR UPDATE OF photo ON copies
    FOR EACH ROW EXECUTE FUNCTION imgrag_copy_bits();

CREATE FUNCTION imgrag_photo_bits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE copies SET bits = binary_quantize(NEW.embedding) WHERE photo = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER photos_bits AFTER UPDATE OF embedding ON photos
    FOR EACH ROW WHEN (OLD.embedding IS DISTINCT FROM NEW.embedding) EXECUTE FUNCTION imgrag_photo_bits();

UPDATE copies c SET bits = binary_quantize(p.embedding) FROM photos p WHERE p.id = c.photo AND p.embedding IS NOT NULL;

DROP INDEX copies_path;
CREATE INDEX copies_path ON copies (path text_pattern_ops) INCLUDE (photo, bits);

-- A date filter's check of a search's exact-word rows (StoreGeneration.passing: `id = ANY(...)
-- AND photo_time >= ...`) read each photo's wide row for its date; with the date beside the
-- id in an index it is an index-only scan.
CREATE INDEX photos_id_time ON photos (id) INCLUDE (photo_time);
