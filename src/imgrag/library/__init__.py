"""One photo library in PostgreSQL + pgvector, written by many machines and served by many
servers (`--store postgresql://...`, IMGRAG_STORE): the same commands, ranking and output
as a `.imgrag/` folder. `open_library` opens whichever of the two a command was given."""
