"""The default model's ONNX graph without its weights, made at development time.

`all-MiniLM-L6-v2.onnx` beside this file (package data, tens of kB) is what `generate`
returns: imgrag.index.bert_onnx's graph of all-MiniLM-L6-v2 with each weight tensor named,
not stored. At run time ONNX Runtime is given those tensors from the model.safetensors
(imgrag.index.default_model), so a plain install needs no `onnx` package (38 MB with
protobuf and ml_dtypes); `onnx` comes with the `models` and `test` extras.

    python -m imgrag.index.default_graph    # after changing bert_onnx or the model's settings

tests/unit/test_default_model.py checks that the shipped file is exactly what this makes."""

from __future__ import annotations

import json
import sys

from imgrag.index import default_model


def generate() -> bytes:
    """The serialised weight-free graph (needs `onnx`)."""
    from imgrag.index.bert_onnx import build_encoder, load_weights

    source = default_model.weights_folder()
    config = json.loads((source / "config.json").read_text())
    graph = build_encoder(config, load_weights(source / default_model.WEIGHTS_FILE), pooling=default_model.POOLING,
                          normalize=True, name=default_model.NAME, external_weights=True)
    return bytes(graph.SerializeToString())


def main() -> None:
    data = generate()
    default_model.GRAPH.write_bytes(data)
    print(f"wrote {default_model.GRAPH} ({len(data)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
