"""Embed and index: descriptions -> vectors -> one complete, searchable index generation.

- `embedding`: sentence-transformers models and the vector cache (each text embedded once);
- `build`: the embed job (the described photos that exist now -> a new generation);
- `generations`: FAISS + SQLite rows written whole into `.imgrag/index/<generation>/`;
  `open_generation` opens the current one for searching;
- `lexical`: BM25 over the descriptions and the visible text;
- `crowding`: how generic each photo's description is;
- `background`: a fixed sample of the photos' vectors, what a query scores in general;
- `query_encoder`: embeds queries, with the index's model exported to ONNX when it can;
- `onnx_export`: that export, made once per model at embed time and verified.
"""
