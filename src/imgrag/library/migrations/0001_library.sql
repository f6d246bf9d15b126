-- imgrag's photo library in PostgreSQL (imgrag.library). One row per photo content (its
-- SHA-256), however many machines hold a copy; each copy is (library, path).
CREATE EXTENSION IF NOT EXISTS vector;

-- The library's own settings: the embedding model ("embedding": {model, fingerprint, dim}).
CREATE TABLE imgrag_settings (
    key   text PRIMARY KEY,
    value jsonb NOT NULL
);

CREATE TABLE photos (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256      text NOT NULL UNIQUE,
    -- describe: the record imgrag describe writes (descriptions.jsonl), without its paths
    record      jsonb,
    caption     text,
    text        text,             -- what is embedded
    lexical     text,             -- every word of the description, labelled fields
    taken       text,
    mtime       bigint,
    photo_time  text,             -- the time date filters see: the search's PHOTO_TIME, as text
    vkey        text,             -- the embedded text's key (index.embedding.text_key)
    embedding   vector,           -- its vector, under the model in imgrag_settings
    -- claims: a worker holds a photo until claim_until; a dead worker's claim expires
    claimed_by  text,
    claim_until timestamptz,
    failures    integer NOT NULL DEFAULT 0,
    last_error  text,
    added       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX photos_to_describe ON photos (id) WHERE record IS NULL;
CREATE INDEX photos_to_embed ON photos (id) WHERE record IS NOT NULL AND embedding IS NULL;
CREATE INDEX photos_time ON photos (photo_time);

-- Where each photo is: one row per copy, the path absolute on that library's machine.
CREATE TABLE copies (
    library text NOT NULL,
    path    text NOT NULL,
    photo   bigint NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (library, path)
);
CREATE INDEX copies_photo ON copies (photo);
CREATE INDEX copies_path ON copies (path text_pattern_ops);

-- Thumbnails and previews, made at index time, so a server needs no access to the files.
CREATE TABLE thumbnails (
    photo bigint NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    size  integer NOT NULL,
    jpeg  bytea NOT NULL,
    PRIMARY KEY (photo, size)
);

-- What the ranking needs beside each photo's own row (the BM25 indexes, each photo's
-- crowding, the background sample), computed over every embedded photo by the embed step
-- and read whole by each server: a search sees one published generation, never half of one.
CREATE TABLE generations (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created   timestamptz NOT NULL DEFAULT now(),
    count     integer NOT NULL,
    meta      jsonb NOT NULL,     -- embedding model, signature of the rows, count
    parts     bytea NOT NULL      -- a zip of the files (imgrag.library.generation)
);
