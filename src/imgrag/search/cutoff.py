"""Which of the ranked hits a search shows by default: the ones that stand out.

A fixed score cut-off cannot fit every query: "giraffe" scores ~0.32 against zebras, cows and
a panda, while a paraphrase of the right photo may score 0.35. So the default set is chosen
per query, from what imgrag knows about it:

- how this query scores against photos in general: its cosine with a fixed sample of the
  collection's own photos (`background.npy`, written into the index generation at embed
  time by `imgrag.index.background`), summarised by a robust centre and spread, so a hit's *standing* is how many
  spreads it scores above that centre (a z-score; unrelated text stands low in any
  collection and with any query wording);
- the gap below the best hit: a hit far below the best one is a weaker kind of match
  (it half matches a query that others match in full);
- exact-word evidence: every word of the query written in a description (any field)
  is strong evidence that the photo shows it, so such a hit needs less standing.

`--min-score X` (a fixed cut-off), `--limit N` and `--all` override it
(`search.SearchOptions`). Chosen with bench/cutoff.py on Flickr8k train; reported on
Flickr8k dev and COCO (README)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVERY_WORD = 0.999  # a words share this high is every query word (the share is a float sum)
BACKGROUND_MIN = 30  # fewer sampled photos than this say too little: the score rule alone then


@dataclass(frozen=True)
class Cutoff:
    """A hit is shown when it stands out from what the query scores against the collection's
    photos in general, or when its score is high in itself; each bar is lowered the more of
    the query's words the description has (linearly, from the first value of each pair with
    no word to the second with every word); a hit far below the best one needs every word.
    Chosen with bench/cutoff.py on Flickr8k train (README): unrelated queries' best hits
    stand up to ~6 spreads out and score up to ~0.44."""

    standing: float = 7.0  # spreads above the query's background centre, no query word present
    worded_standing: float = 2.0  # ... every query word present
    score: float = 0.45  # a fused score shown whatever the background, no query word present
    worded_score: float = 0.25  # ... every query word present (the fixed cut-off imgrag had)
    gap: float = 0.25  # a hit scoring this much below the best one needs every query word
    spread_floor: float = 0.02  # a spread below this (near-identical photos) is not trusted
    alone_score: float | None = None  # `score` in a collection too small for a background; None: the same


DEFAULT_CUTOFF = Cutoff()
# For a query in another language (imgrag.index.crosslingual): its vector is the multilingual
# model's mapped into the English model's space, which lands less close to the photos it
# means than an English one does, and shares no word with the English descriptions. Chosen
# with `bench/cutoff.py --split train --tune --languages de,fr,es,ja,zh,ru` (60 concepts and
# 30 off-topic queries, our translations). On Flickr8k dev, against the English bars: recall
# 0.55 against 0.36 in 300-photo collections and 0.57 against 0.17 in 20-photo ones (where no
# background is sampled and the score alone decides), precision 0.80 and 0.85 against 0.85
# and 0.95, off-topic queries showing nothing 91% against 98% and 99.9% (docs/benchmarks.md).
MULTILINGUAL_CUTOFF = Cutoff(standing=6.0, worded_standing=2.0, score=0.4, worded_score=0.25, gap=0.25, alone_score=0.3)


@dataclass(frozen=True)
class Background:
    """How one query scores against photos in general: a robust centre and spread."""

    centre: float
    spread: float


def background_for(sample: np.ndarray | None, query_vec: np.ndarray, cutoff: Cutoff) -> Background | None:
    """None when the collection is too small to tell."""
    if sample is None or len(sample) < BACKGROUND_MIN:
        return None
    sims = np.asarray(sample, dtype=np.float32) @ np.asarray(query_vec, dtype=np.float32)
    centre = float(np.median(sims))
    spread = 1.4826 * float(np.median(np.abs(sims - centre)))  # MAD: the query's own photos barely move it
    return Background(centre, max(spread, cutoff.spread_floor))


def shown(scores: np.ndarray, words: np.ndarray, background: Background | None, cutoff: Cutoff) -> np.ndarray:
    """Which hits (fused scores; `words`: the share of the query's words each has) to show."""
    if not len(scores):
        return np.zeros(0, dtype=bool)
    words = np.clip(np.asarray(words, dtype=np.float32), 0.0, 1.0)
    score = cutoff.score if background is not None or cutoff.alone_score is None else cutoff.alone_score
    keep = scores >= score - (score - cutoff.worded_score) * words
    if background is not None:
        standing = (scores - background.centre) / background.spread
        keep |= standing >= cutoff.standing - (cutoff.standing - cutoff.worded_standing) * words
    # "zebra in the snow": the zebras, not every snowy photo that half matches
    return keep & ((scores >= scores[0] - cutoff.gap) | (words >= EVERY_WORD))
