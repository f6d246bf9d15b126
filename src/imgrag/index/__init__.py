"""Embed and index: descriptions -> vectors -> one complete, searchable index generation.

- `embedding`: sentence-transformers models and the vector cache (each text embedded once);
- `build`: the embed job (the described photos that exist now -> a new generation);
- `generations`: FAISS + SQLite rows written whole into `.imgrag/index/<generation>/`;
- `lexical`: BM25 over the descriptions and the visible text;
- `crowding`: how generic each photo's description is;
- `query_encoder`: the index's model exported to ONNX, for fast query embedding.
"""
