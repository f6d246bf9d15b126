"""BERT's uncased WordPiece tokenizer, read from a model's tokenizer.json: the default
model's (all-MiniLM-L6-v2) token ids without the `tokenizers` package.

Written by hand, against the house rule of preferring a library, because of what the
library costs: `tokenizers` (12 MB) declares `huggingface_hub`, which brings hf_xet, fsspec
and pyyaml, about 40 MB of a 500 MB install budget for an algorithm of a hundred lines.
Other models (the `models` extra) keep `tokenizers`, which comes with sentence-transformers.

It gives exactly the ids and attention masks of `tokenizers` for this kind of tokenizer.json
(tests/unit/test_wordpiece.py compares them on every code point and thousands of texts):

1. special tokens ([CLS], [MASK]... as added_tokens, matched in the raw text) split the text;
2. BertNormalizer: drop NUL, U+FFFD and "other" characters (Cc, Cf, Co) except tab and
   newlines, turn whitespace into spaces, put spaces around CJK ideographs, NFD and drop
   non-spacing marks (Mn), lowercase (character by character: Σ is always σ);
3. BertPreTokenizer: split on whitespace, and each punctuation character (Unicode P*, and
   every ASCII symbol) alone;
4. WordPiece: greedy longest match from the left, continuations prefixed with `##`; a word
   longer than 100 characters, or with a part in no entry, is one [UNK];
5. [CLS] ... [SEP], cut to the model's max length first; a batch is padded on the right.

The character classes, lowercase and NFD exceptions are `tokenizers`' own, generated from it
into `imgrag.index.bert_unicode`: its Unicode tables are not Python's (older categories,
newer case mappings), and Python's `unicodedata` would differ on a few hundred rarer
characters, by Python version."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np

from imgrag.index import bert_unicode

# Rust's char::is_whitespace (the Unicode White_Space property), plus tab and newlines.
_WHITESPACE = "\t\n\r\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# The CJK ideograph blocks BERT puts spaces around.
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f"
)


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def _as_ranges(code_points: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in sorted(code_points):
        out.append((out.pop()[0], cp) if out and out[-1][1] == cp - 1 else (cp, cp))
    return out


_REMOVE = re.compile(f"[\x00\ufffd{_char_class(bert_unicode.OTHER)}]")
_SPACE = re.compile(f"[{_WHITESPACE}]")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_MARK = re.compile(f"[{_char_class(bert_unicode.MARK_NONSPACING)}]")
_PUNCT = _char_class(bert_unicode.PUNCTUATION)  # Unicode P*, and every ASCII symbol
_LOWER = {chr(cp): chr(cp + what) if isinstance(what, int) else what
          for first, last, step, what in bert_unicode.LOWERCASE for cp in range(first, last + 1, step)}
_UPPER = re.compile(f"[{_char_class(_as_ranges([ord(c) for c in _LOWER]))}]")
_NFD_KEPT = re.compile(f"([{_char_class(bert_unicode.NFD_KEPT)}])")
# After normalising, the only whitespace left is the space.
_PIECES = re.compile(f"[{_PUNCT}]|[^{_PUNCT} ]+")
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CACHE_LIMIT = 200_000  # words kept with their ids (a description's vocabulary repeats)


class WordPieceTokenizer:
    """Token ids for texts, as `tokenizers` gives them from the same tokenizer.json."""

    def __init__(self, vocab: dict[str, int], special: dict[str, int], *, max_length: int,
                 unk: str = "[UNK]", prefix: str = "##", max_word_chars: int = 100,
                 cls: str = "[CLS]", sep: str = "[SEP]", pad_id: int = 0) -> None:
        self.vocab = vocab
        self.special = special
        self.max_length = max_length
        self.unk_id = vocab[unk]
        self.prefix = prefix
        self.max_word_chars = max_word_chars
        self.cls_id, self.sep_id, self.pad_id = vocab[cls], vocab[sep], pad_id
        # leftmost, and the longest of those starting there (as `tokenizers` matches them)
        names = sorted(special, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names))) if names else None
        self._words: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: Path, max_length: int) -> WordPieceTokenizer:
        """A BERT WordPiece tokenizer.json (lowercasing, accents stripped); `max_length`
        counts [CLS] and [SEP]. Any other kind raises ValueError: it would give other ids."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model, norm = data.get("model") or {}, data.get("normalizer") or {}
        post = data.get("post_processor") or {}
        if model.get("type") != "WordPiece" or (data.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
            raise ValueError(f"{path}: not a BERT WordPiece tokenizer")
        if not (norm.get("type") == "BertNormalizer" and norm.get("clean_text") and norm.get("handle_chinese_chars")
                and norm.get("lowercase") and norm.get("strip_accents") in (None, True)):
            raise ValueError(f"{path}: only the uncased BertNormalizer is supported")
        if post.get("type") not in ("TemplateProcessing", "BertProcessing"):
            raise ValueError(f"{path}: unsupported post-processor {post.get('type')!r}")
        added = data.get("added_tokens") or []
        if any(t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
            raise ValueError(f"{path}: only plain special tokens are supported")
        special = {t["content"]: t["id"] for t in added}
        if post.get("type") == "TemplateProcessing":
            single = [next(iter(step)) for step in post["single"]]
            names = [step["SpecialToken"]["id"] for step in post["single"] if "SpecialToken" in step]
            if single != ["SpecialToken", "Sequence", "SpecialToken"]:
                raise ValueError(f"{path}: unsupported template {single}")
            cls_token, sep_token = names
        else:
            cls_token, sep_token = post["cls"][0], post["sep"][0]
        return cls(model["vocab"], special, max_length=max_length, unk=model.get("unk_token", "[UNK]"),
                   prefix=model.get("continuing_subword_prefix", "##"),
                   max_word_chars=model.get("max_input_chars_per_word", 100), cls=cls_token, sep=sep_token,
                   pad_id=((data.get("padding") or {}).get("pad_id") or 0))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for a batch, padded on the right to its longest text."""
        rows = [self.encode(t) for t in texts]
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def encode(self, text: str) -> list[int]:
        """One text's ids: [CLS], its tokens (cut to fit), [SEP]."""
        ids: list[int] = []
        if self._special_re is not None and self._special_re.search(text):
            start = 0
            for m in self._special_re.finditer(text):
                self._tokens(text[start : m.start()], ids)
                ids.append(self.special[m.group()])
                start = m.end()
            self._tokens(text[start:], ids)
        else:
            self._tokens(text, ids)
        keep = max(self.max_length - 2, 0)
        return [self.cls_id, *ids[:keep], self.sep_id]

    def _tokens(self, text: str, out: list[int]) -> None:
        if not text:
            return
        cache = self._words
        for word in words(text):
            pieces = cache.get(word)
            if pieces is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                pieces = cache[word] = self._wordpiece(word)
            out.extend(pieces)

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.unk_id]
        vocab, pieces, start = self.vocab, [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return pieces


def words(text: str) -> list[str]:
    """The words WordPiece cuts into pieces: BertNormalizer, then BertPreTokenizer."""
    return _PIECES.findall(normalise(text))


def normalise(text: str) -> str:
    """BertNormalizer (clean text, CJK spacing, strip accents, lowercase), as `tokenizers` does it."""
    if text.isascii():  # the common case: no marks, no CJK, no other whitespace
        return _ASCII_CONTROL.sub("", text).translate(_ASCII_SPACE).lower()
    text = _SPACE.sub(" ", _REMOVE.sub("", text))
    text = _CJK_CHAR.sub(r" \g<0> ", text)
    text = _MARK.sub("", _nfd(text))
    # Rust's lowercase, character by character (Python's str.lower() knows its own Unicode
    # version, and makes a final Σ into ς).
    return _UPPER.sub(lambda m: _LOWER[m.group()], text)


def _nfd(text: str) -> str:
    if _NFD_KEPT.search(text) is None:
        return unicodedata.normalize("NFD", text)
    parts = _NFD_KEPT.split(text)  # odd items: the characters kept whole
    return "".join(p if i % 2 else unicodedata.normalize("NFD", p) for i, p in enumerate(parts))


_ASCII_SPACE = str.maketrans("\t\n\r", "   ")

