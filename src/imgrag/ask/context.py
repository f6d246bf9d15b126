"""Which photos `ask` sends to the model: the ones the question is about, not the ones
whose descriptions read most like the question.

Search ranks a query as if it were a caption. A question is not one: "which photos were
taken at a beach?" carries "which photos were taken" (words every description could
match) around "a beach", and search's default cut-off, made for captions, then found
nothing. So `ask`:

1. searches the question's subject, with its form taken off (`search_words`);
2. lets through every photo that search's cut-off would show for the subject, and, when
   that is fewer than the photos the model reads, the next best above a relaxed bar
   (`ASK_CUTOFF`): the model judges what a photo shows, as the original service let it;

Chosen with bench/ask_questions.py (our own questions on Flickr8k dev and COCO; README),
where each step's figures are. Also measured and not chosen: a varied set for questions
about many photos ("what animals…", `is_survey`) by maximal marginal relevance over the
candidates' vectors (`Strategy.diversify`): more kinds on average, but fewer on some
questions than the plain ranking of the subject ("what kinds of places…": 2 against 3),
and a lower context recall. Rewriting the question with the chat model was not measured:
no chat model is reachable offline, and the form-stripping already meets the targets
without a request. A fixed `--min-score` still means exactly that cut-off."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from imgrag.search.cutoff import Cutoff
from imgrag.search.ranking import Hit, SearchOptions
from imgrag.search.searcher import Searcher

# The forms people wrap a question in, longest first; what follows is what to search for.
# English only: the descriptions are English, and other languages' questions keep their words.
_FORMS = [
    r"(?:can|could|would) you (?:please )?(?:show|find|give) me",
    r"(?:please )?(?:show|find|give) me",
    r"(?:do|did) (?:i|we) (?:have|take|shoot) (?:any )?(?:photos?|pictures?|pics|shots|images)",
    r"(?:are|is) there (?:any )?(?:photos?|pictures?|pics|shots|images)",
    r"(?:are|is) there (?:any )?",
    r"(?:which|what) (?:of (?:my|our|the) )?(?:photos?|pictures?|pics|shots|images)",
    r"(?:which|what) ones?",
    r"where did (?:i|we) (?:take|see|shoot)",
    r"when (?:was|were|did) (?:i|we|you) (?:last|first)?",
    r"when was the (?:last|first) time (?:i|we|it|you)?",
    r"how many (?:photos?|pictures?|pics|shots|images)",
    r"how many",
    r"what (?:kinds?|sorts?|types?) of",
    r"what",
    r"which",
    r"who",
    r"where",
]
_FORM = re.compile(r"^\s*(?:" + "|".join(_FORMS) + r")\b", re.IGNORECASE)
# Words about the collection itself, not about what a photo shows.
_COLLECTION = re.compile(
    r"\b(?:(?:in|on|from|among|of) (?:all )?(?:my|our|the|these) (?:photos?|pictures?|pics|shots|images|library|collection))"
    r"|\b(?:photos?|pictures?|pics|shots|images) (?:of|with|showing|that show|where|in which)\b"
    r"|\b(?:do|does|did) (?:i|we) have\b|\b(?:appear|appears|are there|is there|show up|shows up)\b"
    r"|\b(?:do|does|did) (?:my|our|the|these) (?:photos?|pictures?|pics|shots|images) show\b"
    r"|\b(?:have|had|did) (?:i|we) (?:been|gone|visited|seen|taken)(?: to)?\b"
    r"|\b(?:were|was) taken\b|\b(?:show|shows|showing|have|has) (?:in them|in it)\b|\bin them\b",
    re.IGNORECASE)
_LEADING = re.compile(r"^\s*(?:of|do|does|did|are|is|were|was|have|has|show|shows|showing|with|there|"
                      r"in|at|on|any|some|the|a|an|i|we|my|our|me|us|you|last|ever|go|went|see|saw|get|got)\b\s*",
                      re.IGNORECASE)
_TRAILING = re.compile(r"\s*\b(?:in|on|at|from|of|last|ever|recently|lately|there|do|did|have|has|appear|"
                       r"shown|show|are|is|were|was)\s*$", re.IGNORECASE)
# "what animals…", "which sports…", "what kinds of food…": the answer lists things, from many photos.
_SURVEY = re.compile(
    r"^\s*(?:(?:what|which) (?:kinds?|sorts?|types?|varieties) of\b"
    r"|(?:what|which) (?!(?:photos?|pictures?|pics|shots|images|ones?|one|of|is|was|does|did|do|are|were)\b)\w+s\b"
    r"|(?:what|which) (?:food|wildlife|furniture|clothing|equipment|weather|scenery)\b"
    r"|how many (?:different|kinds?|sorts?|types?)\b)",
    re.IGNORECASE)


def search_words(question: str) -> str:
    """What the question asks to see: "which photos were taken at a beach?" -> "beach",
    "what animals are in my photos?" -> "animals". A question with nothing left once its
    form is off (or no form to take off) is searched as it is."""
    text = " ".join(question.split()).rstrip("?!. ")
    words = _FORM.sub(" ", text, count=1)
    words = _COLLECTION.sub(" ", words)
    if words == text:  # no form to take off: a search typed into ask
        return question
    previous = None
    while previous != words:
        previous = words
        words = _TRAILING.sub("", _LEADING.sub("", words)).strip(" ,;:")
    return words if words else question


def is_survey(question: str) -> bool:
    """A question whose answer lists kinds of things, seen across many photos."""
    return bool(_SURVEY.search(question))


# The bar a photo past search's own default set must clear to reach the model: photos that
# stand out a little from what this subject scores against the collection in general, or
# score a little; the model then says which of them show it (bench/ask_questions.py).
ASK_CUTOFF = Cutoff(standing=3.0, worded_standing=1.5, score=0.3, worded_score=0.2, gap=0.3)
SURVEY_POOL = 40  # candidates a varied set is picked from
SURVEY_RELEVANCE = 0.7  # MMR's weight on relevance against difference from those picked


@dataclass(frozen=True)
class Strategy:
    """How `ask` picks its photos (the bench compares these; `DEFAULT_STRATEGY` ships)."""

    strip_form: bool = True
    relax: bool = True
    diversify: bool = False
    pool: int = SURVEY_POOL
    relevance: float = SURVEY_RELEVANCE


DEFAULT_STRATEGY = Strategy()
AS_SEARCH = Strategy(strip_form=False, relax=False, diversify=False)  # what `ask` did before


def context_hits(searcher: Searcher, question: str, limit: int, min_score: float | None = None,
                 strategy: Strategy = DEFAULT_STRATEGY) -> list[Hit]:
    """The photos to send for `question`, best first, at most `limit`."""
    query = search_words(question) if strategy.strip_form else question
    if min_score is not None:  # the user's own cut-off: nothing else decides
        return searcher.search(query, SearchOptions(limit=limit, min_score=min_score))
    survey = strategy.diversify and is_survey(question)
    want = max(limit, strategy.pool) if survey else limit
    hits = searcher.search(query, SearchOptions(limit=want))
    if strategy.relax and len(hits) < want:
        more = searcher.search(query, SearchOptions(limit=want, cutoff=ASK_CUTOFF))
        seen = {h.sha256 for h in hits}
        hits = hits + [h for h in more if h.sha256 not in seen]
    if survey and len(hits) > limit:
        hits = varied(searcher, hits, limit, strategy.relevance)
    return [replace(h, rank=i) for i, h in enumerate(hits[:limit], start=1)]


def varied(searcher: Searcher, hits: list[Hit], limit: int, relevance: float = SURVEY_RELEVANCE) -> list[Hit]:
    """`limit` of `hits` (best first) by maximal marginal relevance: each next photo is the
    one best balancing its score against its likeness to the photos already picked.
    Written here because it is ten lines over vectors the index already holds."""
    vectors = searcher.description_vectors([h.sha256 for h in hits])
    if vectors is None:
        return hits[:limit]
    scores = np.array([h.score for h in hits], np.float32)
    likeness = vectors @ vectors.T
    picked = [0]
    left = list(range(1, len(hits)))
    while left and len(picked) < limit:
        nearest = likeness[np.ix_(left, picked)].max(axis=1)
        best = int(np.argmax(relevance * scores[left] - (1 - relevance) * nearest))
        picked.append(left.pop(best))
    return [hits[i] for i in picked]
