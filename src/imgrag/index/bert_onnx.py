"""An ONNX graph of a BERT-family text encoder, built from its weights without torch.

    config = json.loads((folder / "config.json").read_text())
    weights = load_weights(folder / "model.safetensors")
    model = build_encoder(config, weights, pooling=["mean"], normalize=True)
    onnx.save_model(model, "model.onnx")

    # or: a graph without its weights (tens of kB, shipped), and at run time, without the
    # `onnx` package, the file of the tensors it names, written beside it
    model = build_encoder(config, weights, external_weights=True)
    write_weights(graph_weights(config, weights), folder / "model.onnx.data")

`config` is the model's Hugging Face `config.json` as a dict; `weights` maps the names in
its `model.safetensors` to numpy arrays (`load_weights`). The graph is what
`transformers`' BertModel / RobertaModel / XLMRobertaModel compute in eval mode (absolute
position embeddings, post-LayerNorm encoder layers), followed by sentence-transformers'
Pooling and Normalize modules:

    inputs   input_ids, attention_mask [, token_type_ids]   int64 (batch, sequence)
    outputs  token_embeddings    float32 (batch, sequence, hidden): the last hidden state
             sentence_embedding  float32 (batch, width): pooled (modes concatenated), then
                                 L2-normalised when `normalize` (only when `pooling` is given)

Why hand-written: every maintained converter we know of (torch.onnx, optimum /
optimum-onnx, onnxruntime-genai's model builder) runs the model in torch to trace it, and
fastembed only downloads graphs that others exported. A BERT encoder is a dozen standard
ONNX operators per layer, so the graph is written here with `onnx.helper` and the weights
read with `safetensors`' numpy loader: imgrag's default install needs neither torch nor a
network to make its encoder.

Each layer uses two of ONNX Runtime's fused CPU operators (domain com.microsoft):
`Attention` (one matrix product for query, key and value, the softmax over real tokens
only) and `BiasGelu` (the exact erf GELU, never the tanh `FastGelu`). Each dense layer's
bias and residual are two `Add`s before a standard `LayerNormalization`, not the fused
`SkipLayerNormalization`: ONNX Runtime's CPU kernel of that one is a scalar loop, ten times
slower than its `LayerNormalization` (a tenth of each run on ONNX Runtime 1.32; without it,
about 10% more texts per second). So a session must not fuse them back (it would at
ORT_ENABLE_EXTENDED and above: run this graph at ORT_ENABLE_BASIC). The same arithmetic
as the plain operators (cosine >= 0.9999995 with sentence-transformers).

Opset 17: LayerNormalization is a single operator (ONNX Runtime >= 1.14 runs it).
`graph_weights` and `write_weights` need neither onnx nor ONNX Runtime: what a plain install runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
MS = "com.microsoft"  # ONNX Runtime's contrib operators
EXTERNAL = "model.onnx.data"  # the file a weight-free graph's tensors are in, beside the graph (`write_weights`)
ALIGN = 1 << 16  # each tensor's offset in it: a multiple of this, so ONNX Runtime can map it from the file


class UnsupportedModel(ValueError):
    """A config or weights this builder does not reproduce exactly; str() says what."""


def load_weights(path: Path | str) -> dict[str, np.ndarray]:
    """A model.safetensors as float32 numpy arrays, names without a task prefix
    (`bert.embeddings...` -> `embeddings...`, as a BertModel inside a bigger model saves them)."""
    from safetensors.numpy import load_file

    raw = load_file(str(path))
    word = "embeddings.word_embeddings.weight"
    found = next((n for n in raw if n == word or n.endswith("." + word)), word)
    strip = found[: -len(word)]
    return {name.removeprefix(strip):
            (array.astype(np.float32) if array.dtype.kind == "f" else array) for name, array in raw.items()}


def build_encoder(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], *,
                  pooling: Sequence[str] | None = ("mean",), normalize: bool = True,
                  name: str = "text-encoder", external_weights: bool = False) -> Any:
    """The encoder as an `onnx.ModelProto`: weights inline, or with `external_weights` only
    their names, shapes, types and offsets in the EXTERNAL file (`graph_weights`,
    `write_weights`). Raises UnsupportedModel for anything it would not compute exactly."""
    from onnx import TensorProto, helper

    spec = _Spec.of(config, weights, pooling)
    g = _Graph(external_weights=external_weights)
    _body(g, spec, weights, pooling, normalize)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.type_inputs else [])
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in inputs]
    outputs = [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "sequence", spec.hidden])]
    if pooling:
        outputs.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                                     ["batch", spec.hidden * len(pooling)]))
    graph = helper.make_graph(g.nodes, name, graph_inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="imgrag.bert_onnx")
    model.ir_version = 8  # what ONNX Runtime 1.14+ reads for opset 17
    return model


def graph_weights(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], *,
                  pooling: Sequence[str] | None = ("mean",), normalize: bool = True) -> dict[str, np.ndarray]:
    """The tensors a graph built with `external_weights=True` names, by name: the same code
    as the build, without onnx."""
    g = _Graph(record_only=True)
    _body(g, _Spec.of(config, weights, pooling), weights, pooling, normalize)
    return g.weights


def _body(g: _Graph, spec: _Spec, weights: Mapping[str, np.ndarray], pooling: Sequence[str] | None,
          normalize: bool) -> None:
    hidden = _embeddings(g, spec, weights)
    mask = g.node("Cast", ["attention_mask"], to=6)  # int32: Attention's mask_index, (batch, sequence)
    for i in range(spec.layers):
        hidden = _layer(g, spec, weights, f"encoder.layer.{i}", hidden, mask)
    g.node("Identity", [hidden], ["token_embeddings"])
    if pooling:
        pooled = g.node("Concat", [_pool(g, mode, "token_embeddings") for mode in pooling], axis=-1) \
            if len(pooling) > 1 else _pool(g, pooling[0], "token_embeddings")
        if normalize:
            pooled = _l2_normalise(g, pooled)
        g.node("Identity", [pooled], ["sentence_embedding"])


# -- what the config says -------------------------------------------------------------------


class _Spec:
    """The settings the graph needs, checked against the weights that are there."""

    def __init__(self, config: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
        self.model_type = str(config.get("model_type", "bert"))
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.activation = str(config.get("hidden_act", "gelu"))
        self.pad_id = int(config.get("pad_token_id") or 0)
        types = weights.get("embeddings.token_type_embeddings.weight")
        self.type_inputs = types is not None and types.shape[0] > 1
        # RoBERTa family: positions count real tokens from padding_idx + 1, as transformers does.
        self.roberta_positions = self.model_type != "bert"

    @classmethod
    def of(cls, config: Mapping[str, Any], weights: Mapping[str, np.ndarray], pooling: Sequence[str] | None) -> _Spec:
        model_type = config.get("model_type", "bert")
        if model_type not in MODEL_TYPES:
            raise UnsupportedModel(f"model_type {model_type!r} (supported: {', '.join(MODEL_TYPES)})")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModel(f"position_embedding_type {config.get('position_embedding_type')!r}")
        if config.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise UnsupportedModel(f"hidden_act {config.get('hidden_act')!r} (supported: {', '.join(ACTIVATIONS)})")
        if any(mode not in POOLING_MODES for mode in pooling or ()):
            raise UnsupportedModel(f"pooling {list(pooling or ())} (supported: {', '.join(POOLING_MODES)})")
        spec = cls(config, weights)
        if spec.hidden % spec.heads:
            raise UnsupportedModel(f"hidden_size {spec.hidden} is not a multiple of {spec.heads} heads")
        missing = [n for n in _weight_names(spec.layers) if n not in weights]
        if missing:
            raise UnsupportedModel(f"weights missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return spec


def _weight_names(layers: int) -> list[str]:
    names = [f"embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings", "LayerNorm")]
    names.append("embeddings.LayerNorm.bias")
    for i in range(layers):
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            names += [f"encoder.layer.{i}.{part}.weight", f"encoder.layer.{i}.{part}.bias"]
    return names


# -- building blocks -------------------------------------------------------------------------


class _Graph:
    """Nodes and initializers, each output named once. Tensors made from the model's weights
    (`weight`) are inline, or external (`external_weights`: name, shape and type only); with
    `record_only` nothing of onnx is made, only `weights` (name -> array) is filled."""

    def __init__(self, *, external_weights: bool = False, record_only: bool = False) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.weights: dict[str, np.ndarray] = {}
        self.external = external_weights
        self.record_only = record_only
        self._count = 0
        self._offset = 0  # where the next external tensor starts in EXTERNAL

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | float | list[int], hint: str = "const") -> str:
        """A small constant, always inline."""
        name = self.name(hint)
        if not self.record_only:
            from onnx import numpy_helper

            self.initializers.append(numpy_helper.from_array(_c_array(value), name))
        return name

    def weight(self, value: np.ndarray, hint: str) -> str:
        """A tensor of the model's weights: inline, or external (named, not stored)."""
        name = self.name(hint)
        array = _c_array(value)
        if self.record_only:
            self.weights[name] = array
        elif not self.external:
            from onnx import numpy_helper

            self.initializers.append(numpy_helper.from_array(array, name))
        else:
            from onnx import TensorProto, helper

            tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                 data_location=TensorProto.EXTERNAL)
            offset, self._offset = self._offset, _aligned(self._offset + array.nbytes)
            for key, value_ in (("location", EXTERNAL), ("offset", str(offset)), ("length", str(array.nbytes))):
                tensor.external_data.add(key=key, value=value_)
            self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> str:
        outputs = outputs or [self.name(op.lower())]
        if not self.record_only:
            from onnx import helper

            self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_weights(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """`graph_weights`' tensors, in order, at the offsets a graph built with
    `external_weights=True` names: the EXTERNAL file beside that graph (numpy only)."""
    with path.open("wb") as f:
        for array in tensors.values():
            f.write(b"\0" * (_aligned(f.tell()) - f.tell()))
            f.write(array.tobytes())


def _c_array(value: np.ndarray | float | list[int]) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind in "iu":
        array = array.astype(np.int64, copy=False)
    return array if array.flags.c_contiguous else array.copy(order="C")  # (ascontiguousarray makes a scalar 1-d)


def _matmul(g: _Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str) -> str:
    """x @ W.T (its bias is added after it: by BiasGelu, or an Add before the LayerNorm), W stored transposed once
    so the graph has a plain MatMul."""
    return g.node("MatMul", [x, g.weight(weights[f"{prefix}.weight"].T, f"{prefix}.weight_t")])


def _layer_norm(g: _Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str, eps: float) -> str:
    scale, bias = g.weight(weights[f"{prefix}.weight"], f"{prefix}.weight"), g.weight(weights[f"{prefix}.bias"], f"{prefix}.bias")
    return g.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def _add_layer_norm(g: _Graph, x: str, residual: str, weights: Mapping[str, np.ndarray], prefix: str,
                    eps: float) -> str:
    """LayerNorm(x + dense bias + residual): Adds and a LayerNormalization (see the module
    docstring for why not SkipLayerNormalization)."""
    biased = g.node("Add", [x, g.weight(weights[f"{prefix}.dense.bias"], f"{prefix}.dense.bias")])
    return _layer_norm(g, g.node("Add", [biased, residual]), weights, f"{prefix}.LayerNorm", eps)


def _embeddings(g: _Graph, spec: _Spec, weights: Mapping[str, np.ndarray]) -> str:
    words = g.node("Gather", [g.weight(weights["embeddings.word_embeddings.weight"], "word_embeddings"), "input_ids"])
    table = g.weight(weights["embeddings.position_embeddings.weight"], "position_embeddings")
    if spec.roberta_positions:
        # transformers' create_position_ids_from_input_ids: cumsum over real tokens, from pad_id + 1
        real = g.node("Cast", [g.node("Not", [g.node("Equal", ["input_ids", g.const(spec.pad_id)])])], to=7)
        counted = g.node("Mul", [g.node("CumSum", [real, g.const(1)]), real])
        positions = g.node("Add", [counted, g.const(spec.pad_id)])
        position_rows = g.node("Gather", [table, positions])
    else:  # positions 0 .. sequence - 1: the table's first rows
        length = g.node("Shape", ["input_ids"], start=1, end=2)
        position_rows = g.node("Slice", [table, g.const([0]), length, g.const([0])])
    summed = g.node("Add", [words, position_rows])
    types = weights.get("embeddings.token_type_embeddings.weight")
    if types is not None:
        kinds = g.node("Gather", [g.weight(types, "token_type_embeddings"), "token_type_ids"]) if spec.type_inputs \
            else g.weight(types[0], "token_type_embedding_0")  # one type: the same row added to every token
        summed = g.node("Add", [summed, kinds])
    return _layer_norm(g, summed, weights, "embeddings.LayerNorm", spec.eps)


def _layer(g: _Graph, spec: _Spec, weights: Mapping[str, np.ndarray], prefix: str, x: str, mask: str) -> str:
    attention = f"{prefix}.attention.self"
    parts = ("query", "key", "value")
    qkv = np.concatenate([weights[f"{attention}.{p}.weight"].T for p in parts], axis=1)  # (hidden, 3 hidden)
    qkv_bias = np.concatenate([weights[f"{attention}.{p}.bias"] for p in parts])
    # softmax(q k^T / sqrt(head)) v per head, padding tokens masked out (mask_index: 1 real, 0 padding)
    context = g.node("Attention", [x, g.weight(qkv, f"{attention}.qkv_weight"), g.weight(qkv_bias, f"{attention}.qkv_bias"),
                                   mask], domain=MS, num_heads=spec.heads)
    x = _add_layer_norm(g, _matmul(g, context, weights, f"{prefix}.attention.output.dense"), x, weights,
                        f"{prefix}.attention.output", spec.eps)
    inner = _activation(g, _matmul(g, x, weights, f"{prefix}.intermediate.dense"),
                        g.weight(weights[f"{prefix}.intermediate.dense.bias"], f"{prefix}.intermediate.dense.bias"),
                        spec.activation)
    return _add_layer_norm(g, _matmul(g, inner, weights, f"{prefix}.output.dense"), x, weights, f"{prefix}.output",
                           spec.eps)


def _activation(g: _Graph, x: str, bias: str, kind: str) -> str:
    """activation(x + bias)."""
    if kind == "gelu":  # exact: 0.5 x (1 + erf(x / sqrt 2)), fused with the bias
        return g.node("BiasGelu", [x, bias], domain=MS)
    x = g.node("Add", [x, bias])
    if kind == "relu":
        return g.node("Relu", [x])
    # gelu_new / gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    cube = g.node("Mul", [g.node("Mul", [x, x]), x])
    inner = g.node("Mul", [g.node("Add", [x, g.node("Mul", [cube, g.const(0.044715)])]), g.const(math.sqrt(2.0 / math.pi))])
    return g.node("Mul", [g.node("Mul", [x, g.const(0.5)]), g.node("Add", [g.node("Tanh", [inner]), g.const(1.0)])])


def _pool(g: _Graph, mode: str, tokens: str) -> str:
    """sentence-transformers' Pooling over the real tokens (attention_mask 1)."""
    mask = g.node("Unsqueeze", [g.node("Cast", ["attention_mask"], to=1), g.const([2])])  # (batch, seq, 1)
    if mode == "cls":
        return g.node("Gather", [tokens, g.const(0)], axis=1)
    if mode == "max":
        masked = g.node("Where", [g.node("Greater", [mask, g.const(0.0)]), tokens, g.const(-np.inf)])
        return g.node("ReduceMax", [masked], axes=[1], keepdims=0)
    total = g.node("ReduceSum", [g.node("Mul", [tokens, mask]), g.const([1])], keepdims=0)
    count = g.node("Max", [g.node("ReduceSum", [mask, g.const([1])], keepdims=0), g.const(1e-9)])
    if mode == "mean_sqrt_len_tokens":
        count = g.node("Sqrt", [count])
    return g.node("Div", [total, count])


def _l2_normalise(g: _Graph, x: str) -> str:
    """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
    norm = g.node("ReduceL2", [x], axes=[-1], keepdims=1)
    return g.node("Div", [x, g.node("Max", [norm, g.const(1e-12)])])
