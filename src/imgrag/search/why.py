"""Why a photo matched, in one short line for each hit: the query's words found in its
description and where, or, with none in common, that it is near in meaning and what else
the photo holds."""

from __future__ import annotations

from imgrag.index.lexical import VISIBLE_TEXT_LABEL, field_lines, stems
from imgrag.index.lexical import words as words_of

_WHY_CHARS = 160
_SNIPPET_CHARS = 60


def why_matched(terms: list, lexical: str, caption: str) -> str:
    """One short line: the query words found in the description, the fields holding them
    and a snippet of the best such field (visible text first; the caption is shown anyway),
    or, with no word in common, that the match is by meaning and what else the photo holds."""
    query_stems = {t.stem for t in terms}
    matched: set[str] = set()  # query words found in some field
    labels: list[str] = []  # the fields holding them, in field order
    snippets: list[tuple[bool, str]] = []
    for label, words in field_lines(lexical):
        field_words = words_of(words)
        field_stems = stems(field_words)
        present = set(field_stems)
        hit_words = [t.word for t in terms if t.stem in present]
        if not hit_words:
            continue
        matched.update(hit_words)
        labels.append(label)
        if label != "caption":
            first = next(w for w, st in zip(field_words, field_stems, strict=True) if st in query_stems)
            snippets.append((label != VISIBLE_TEXT_LABEL, f"{label}: {_snippet(words, first)}"))
    if not matched:
        return _clip(_by_meaning(lexical))
    ordered = [t.word for t in terms if t.word in matched]
    line = "matched " + ", ".join(f'"{w}"' for w in ordered) + " in " + ", ".join(dict.fromkeys(labels))
    best = [text for _, text in sorted(snippets, key=lambda s: s[0])[:1]]  # stable: field order otherwise
    return _clip("; ".join([line, *best]))


# With no word in common, the first of these fields says what the caption may not.
_MEANING_FIELDS = ("objects", "phrases", "setting", "tags")


def _by_meaning(lexical: str) -> str:
    fields = dict(field_lines(lexical))
    shown = next((f"; {label}: {_snippet(fields[label], '')}" for label in _MEANING_FIELDS if fields.get(label)), "")
    return "near in meaning, no word in common" + shown


def _snippet(text: str, word: str) -> str:
    """The field, or for a long one the stretch around its first matched word."""
    text = " ".join(text.split())
    if len(text) <= _SNIPPET_CHARS:
        return text
    at = max(0, text.lower().find(word))
    start = max(0, text.rfind(" ", 0, max(0, at - _SNIPPET_CHARS // 3)) + 1)
    end = text.find(" ", min(len(text), start + _SNIPPET_CHARS))
    end = len(text) if end == -1 else end
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _WHY_CHARS else text[: _WHY_CHARS - 1].rstrip() + "…"
