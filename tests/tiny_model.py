"""A tiny sentence-transformers model folder, built offline from random weights.

What a user gets from `SentenceTransformer.save` or a model download: config.json and
model.safetensors of a (2-layer, 32-wide) BERT, a fast tokenizer, modules.json,
sentence_bert_config.json (its own max length) and 1_Pooling/config.json. Random weights
rank nonsense, but every step of imgrag's path must treat the folder like any model."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = ["a", "an", "the", "of", "on", "in", "at", "by", "and", "with", "to", "is", "are", "photo", "dog", "brown", "running", "sandy", "beach", "sea", "ocean", "kitchen", "red", "kettle", "gas", "stove", "stop", "sign", "street", "corner", "children", "blowing", "out", "candles", "birthday", "cake", "party", "cat", "sleeping", "laptop", "car", "bicycle", "tree", "snow", "mountain", "sunset", "night", "city", "people", "man", "woman", "child"]


def make_tiny_model(folder: Path, seed: int, pooling: str = "mean", max_seq_length: int = 48,
                    dense: list[tuple[int, str]] = (), kind: str = "bert") -> Path:
    """Write a model folder; a different `seed` gives other weights, same shape. `dense`:
    Dense layers after the pooling, as (output size, activation class name in torch.nn).
    `kind`: "bert", or "xlm-roberta" (positions counted from the padding id, one token type:
    the family of multilingual models), with the same word-piece tokenizer."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers before 5.x
        from sentence_transformers import models
    transformers.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder.parent / f".{folder.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *WORDS]
    (raw / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(raw)
    torch.manual_seed(seed)
    shape = {"vocab_size": len(dict.fromkeys(vocab)), "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "xlm-roberta":
        config = XLMRobertaConfig(**shape, max_position_embeddings=130, pad_token_id=0, type_vocab_size=1)
        XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(raw)
    else:
        config = BertConfig(**shape, max_position_embeddings=128)
        BertModel(config).save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=max_seq_length)
    pool = models.Pooling(config.hidden_size, pooling_mode=pooling)
    layers, width = [], config.hidden_size
    for size, activation in dense:
        layers.append(models.Dense(width, size, activation_function=getattr(torch.nn, activation)()))
        width = size
    SentenceTransformer(modules=[transformer, pool, *layers, models.Normalize()], device="cpu").save(str(folder))
    return folder
