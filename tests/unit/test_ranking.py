"""Ranking: dense similarity fused with BM25 exact-word evidence (rare words, words written
on the photo) and each photo's crowding, the --min-score cut-off and why each hit matched. A small index of descriptions is written with the real
`write_generation` and embedded with the packaged MiniLM, in process (one model load)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import described_generation
from imgrag.describe.schema import lexical_text
from imgrag.index.embedding import DEFAULT_MODEL, load_model
from imgrag.index.generations import open_generation
from imgrag.index.lexical import LexicalIndex, field_lines, indexed_text, query_terms, visible_text
from imgrag.search.ranking import (
    DEFAULT_FUSION,
    DEFAULT_MIN_SCORE,
    DENSE_ONLY,
    Candidates,
    Fusion,
    SearchOptions,
    candidates,
    order,
    rank,
)
from imgrag.store.paths import CROWDING_FILE, LEXICAL_DIR, VISIBLE_TEXT_DIR
from imgrag.store.workspace import Workspace

PHOTOS = {
    "stop": {"caption": "A red octagonal road sign at a street corner.", "objects": ["road sign", "pole", "street"],
             "text": ["STOP"], "setting": "city street"},
    "cafe": {"caption": "A paper cup on a wooden table next to a laptop and a notebook.",
             "description": "Morning light falls across a cluttered desk with a laptop, an open notebook, pens and "
                            "a smartphone. A takeaway cup with a printed logo stands by the keyboard.",
             "objects": ["paper cup", "laptop", "notebook", "pen", "smartphone", "desk lamp"],
             "text": ["Kowalczyk"], "setting": "home office", "tags": ["work", "morning"]},
    "latte": {"caption": "A latte with foam art in a coffee shop.", "objects": ["mug", "saucer"],
              "setting": "coffee shop"},
    "espresso": {"caption": "An espresso machine pouring coffee into a small cup.", "objects": ["espresso machine", "cup"],
                 "setting": "coffee bar"},
    "beach_dog": {"caption": "A brown dog running on a sandy beach by the sea.", "objects": ["dog", "beach", "sea"],
                  "activities": ["running"], "setting": "beach"},
    "kitchen": {"caption": "A kitchen with a red kettle on a gas stove.", "objects": ["kettle", "stove"],
                "setting": "kitchen"},
    "birthday": {"caption": "Children blowing out candles on a birthday cake.", "objects": ["cake", "candles"],
                 "people": {"count": 3, "activities": ["blowing out candles"]}, "setting": "living room"},
    "traffic": {"caption": "Cars waiting at a red traffic light at a crossing.", "objects": ["car", "traffic light"],
                "setting": "intersection"},
    "plate": {"caption": "A blue hatchback parked beside a hedge.", "objects": ["car", "hedge"],
              "text": ["KXR 4471"], "setting": "suburban driveway"},
    "car_plate": {"caption": "Close-up of a car number plate on a red car.", "objects": ["car", "number plate"],
                  "setting": "street"},
    "bus": {"caption": "A city bus stopped at a bus stop in the rain.", "objects": ["bus", "umbrella"],
            "setting": "street", "tags": ["rain"]},
}
NAMES = list(PHOTOS)
EVERY = len(PHOTOS)


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def generation(model, tmp_path_factory):
    with described_generation(tmp_path_factory.mktemp("ranking"), PHOTOS, model) as generation:
        yield generation


def search(generation, model, query, fusion=DEFAULT_FUSION, limit=EVERY, min_score=None):
    vec = model.encode([query])[0]
    # no cut-off unless one is given: these tests are about order (tests/test_cutoff.py: the default set)
    return rank(generation, vec, query, SearchOptions(limit=limit, min_score=min_score, show_all=min_score is None), fusion)


def names(hits):
    return [h.sha256 for h in hits]


def rows_by_name(generation):
    return {d.sha256: row for row, d in generation.docs(list(range(generation.size))).items()}


def test_visible_text_finds_its_photo_where_meaning_alone_does_not(generation, model):
    # A number plate seen only on the photo: by meaning, the close-up of a plate wins;
    # the exact number, written on the other photo, must bring that one to the top.
    query = "car 4471"
    assert names(search(generation, model, query, DENSE_ONLY))[0] == "car_plate", "else the test proves nothing"
    hits = search(generation, model, query)
    assert hits[0].sha256 == "plate"
    assert hits[0].why.startswith('matched "car", "4471" in objects, visible text')
    assert hits[0].extra["lexical"] == 1.0


def test_a_name_written_on_the_photo_finds_it(generation, model):
    hits = search(generation, model, "kowalczyk")
    assert hits[0].sha256 == "cafe" and "visible text: Kowalczyk" in hits[0].why


def test_why_quotes_the_stretch_of_a_long_field_that_matched(generation, model):
    hit = search(generation, model, "takeaway cup by a keyboard", limit=1)[0]
    assert hit.sha256 == "cafe"
    assert hit.why.startswith('matched "takeaway", "cup", "keyboard" in caption, description, objects; description: …')
    assert "takeaway cup" in hit.why and len(hit.why) <= 160 and "\n" not in hit.why


def test_exact_words_lift_the_photo_that_has_them(generation, model):
    hits = search(generation, model, "STOP sign")
    assert hits[0].sha256 == "stop"
    assert '"stop"' in hits[0].why and "visible text" in hits[0].why
    parts = hits[0].extra
    assert parts["visible_text"] > 0.15 and parts["lexical"] > 0.3  # "sign" is not written on it
    f = DEFAULT_FUSION
    expected = parts["dense"] + f.rare_words * parts["lexical"] + f.visible_text * parts["visible_text"] \
        - f.crowding * parts["crowding"]
    assert hits[0].score == pytest.approx(expected, abs=1e-3)


def test_without_lexical_evidence_fusion_keeps_the_dense_ranking_but_for_crowding(generation, model):
    query = "a puppy playing in the surf"  # no word of it in any description
    assert not any(generation.lexical.scores(query).raw > 0)
    dense, fused = search(generation, model, query, DENSE_ONLY), search(generation, model, query)
    no_crowding = search(generation, model, query, Fusion(crowding=0.0))
    assert names(no_crowding) == names(dense) and names(fused)[0] == "beach_dog"
    assert [h.score for h in no_crowding] == [h.score for h in dense]
    for h in fused:
        assert h.score == pytest.approx(max(0.0, h.extra["dense"] - DEFAULT_FUSION.crowding * h.extra["crowding"]), abs=1e-3)
    # not the caption again (it is shown anyway): what else the description holds
    assert fused[0].why.startswith("near in meaning, no word in common; objects: dog")
    assert fused[0].caption not in fused[0].why


def test_fusion_cannot_push_the_dense_top_hit_down_without_lexical_matches_in_its_rivals(generation, model):
    vec = model.encode(["dog on the beach"])[0]
    found = candidates(generation, vec, "dog on the beach")
    rows, _ = order(found, DEFAULT_FUSION)
    assert generation.docs([int(rows[0])])[int(rows[0])].sha256 == "beach_dog"
    # exact words only add; crowding moves a score by a few hundredths at most
    without_crowding = Fusion(crowding=0.0).combine(found)
    assert np.all(without_crowding >= found.dense - 1e-6)
    assert np.all(np.abs(DEFAULT_FUSION.combine(found) - without_crowding) <= DEFAULT_FUSION.crowding * 0.5)


def test_each_row_has_its_crowding_and_an_index_without_it_still_searches(generation, model, tmp_path):
    assert generation.crowding is not None and len(generation.crowding) == generation.size
    assert float(np.median(generation.crowding)) == pytest.approx(0.0, abs=1e-6), "the median photo is not moved"
    # The street scenes (cars, plates, traffic lights, signs) crowd each other; the dog on
    # the beach and the birthday cake have no scene like them.
    row = rows_by_name(generation)
    loneliest = sorted(row, key=lambda name: generation.crowding[row[name]])[:2]
    assert sorted(loneliest) == ["beach_dog", "birthday"]
    assert min(generation.crowding[row[n]] for n in ("car_plate", "traffic")) > max(generation.crowding[row[n]] for n in loneliest)
    saved = tmp_path / CROWDING_FILE
    shutil.move(str(generation.folder / CROWDING_FILE), saved)
    try:
        old = open_generation(Workspace(generation.folder.parent.parent))
        assert old.crowding is None
        hits = rank(old, model.encode(["dog on the beach"])[0], "dog on the beach", SearchOptions(limit=3))
        assert hits[0].sha256 == "beach_dog" and all(h.extra["crowding"] == 0 for h in hits)
        old.db.close()
    finally:
        shutil.move(str(saved), generation.folder / CROWDING_FILE)


def test_min_score_hides_the_irrelevant_tail(generation, model):
    everything = search(generation, model, "quarterly tax spreadsheet", min_score=0)
    assert len(everything) == len(PHOTOS), "--min-score 0 shows everything"
    assert search(generation, model, "quarterly tax spreadsheet", min_score=DEFAULT_MIN_SCORE) == []
    relevant = search(generation, model, "birthday cake with candles", min_score=DEFAULT_MIN_SCORE)
    assert relevant and relevant[0].sha256 == "birthday"
    assert len(relevant) < len(PHOTOS)
    assert all(h.score >= DEFAULT_MIN_SCORE for h in relevant)
    assert [h.rank for h in relevant] == list(range(1, len(relevant) + 1))


def test_scores_are_in_a_stable_range_and_sorted(generation, model):
    hits = search(generation, model, "red kettle on the stove")
    assert hits[0].sha256 == "kitchen"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    most = 1.0 + DEFAULT_FUSION.rare_words + DEFAULT_FUSION.visible_text + DEFAULT_FUSION.crowding
    assert all(0 <= s <= most for s in scores)
    assert 0.5 < scores[0] <= most


def test_rows_only_exact_words_find_enter_with_their_true_dense_score(generation, model):
    query = "kowalczyk"
    vec = model.encode([query])[0]
    shallow = candidates(generation, vec, query, depth=1)
    full = candidates(generation, vec, query, depth=len(PHOTOS))
    cafe = rows_by_name(generation)["cafe"]
    assert cafe in shallow.rows.tolist(), "BM25's best rows join the dense candidates"
    at = lambda found: float(found.dense[found.rows.tolist().index(cafe)])
    assert at(shallow) == pytest.approx(at(full), abs=1e-5)


def test_limit_and_dense_only_fusion_weight(generation, model):
    assert len(search(generation, model, "coffee", limit=2)) == 2
    found = Candidates(rows=np.arange(4), dense=np.array([0.4, 0.4, 0.4, -0.1]), lexical=np.array([0.0, 1.0, 0.0, 0.0]),
                       visible_text=np.array([0.0, 0.0, 0.5, 0.0]), crowding=np.array([0.1, 0.0, -0.1, 0.0]), terms=[])
    assert DENSE_ONLY.combine(found).tolist() == pytest.approx([0.4, 0.4, 0.4, 0.0]), "a negative cosine shows as 0"
    fused = Fusion(rare_words=0.1, visible_text=0.2, crowding=0.5).combine(found)
    assert fused.tolist() == pytest.approx([0.35, 0.5, 0.55, 0.0])


def test_generation_without_lexical_index_ranks_by_meaning(generation, model, tmp_path):
    # An index written by an older imgrag has no BM25 folder: search still works, dense only.
    assert generation.lexical is not None
    old = open_generation(Workspace(generation.folder.parent.parent))
    saved = tmp_path / "lexical"
    shutil.move(str(generation.folder / LEXICAL_DIR), saved)
    try:
        assert old.lexical is None
        vec = model.encode(["kowalczyk"])[0]
        hits = rank(old, vec, "kowalczyk", SearchOptions(limit=3, show_all=True))
        assert len(hits) == 3 and all(h.extra["lexical"] == 0 for h in hits)
        assert hits[0].sha256 == "cafe", "the words written on it still find it"
    finally:
        shutil.move(str(saved), generation.folder / LEXICAL_DIR)
        old.db.close()


def test_lexical_index_round_trip_and_normalised_scores(tmp_path):
    texts = [lexical_text({"caption": "A red STOP sign.", "text": ["STOP"]}),
             lexical_text({"caption": "A dog on a beach."}),
             lexical_text({"caption": "Dogs running on beaches at sunset."})]
    LexicalIndex.build([indexed_text(t) for t in texts]).save(tmp_path / "lex")
    index = LexicalIndex.load(tmp_path / "lex")
    assert index.size == 3
    s = index.scores("dog beach")
    assert s.raw[0] == 0 and s.raw[1] > 0 and s.raw[2] > 0, "stemming: dogs/beaches match dog/beach"
    norm = s.normalised(np.arange(3))
    assert norm[0] == 0 and 0.5 < norm[1] <= 1 and 0.5 < norm[2] <= 1
    half = index.scores("dog xyzzyq").normalised(np.arange(3))
    assert 0 < half[1] < norm[1], "a query word no description has counts as unmatched"
    assert index.scores("stop sign").top(5).tolist() == [0]
    assert s.top(1).tolist() in ([1], [2]) and sorted(s.top(5).tolist()) == [1, 2]
    assert s.matched is not None and s.matched.tolist() == [1, 2], "each matching row once, though both words match it"
    assert not index.scores("the of and").raw.any(), "stopwords only: no evidence"
    assert LexicalIndex.load(tmp_path / "missing") is None
    # descriptions without one indexable word: no lexical index, and no error
    LexicalIndex.build([indexed_text(lexical_text({"caption": "A."}))]).save(tmp_path / "empty")
    assert LexicalIndex.load(tmp_path / "empty") is None


def test_lexical_text_is_labelled_fields():
    text = lexical_text({"caption": "A shop front.", "text": ["OPEN\t24h", "Joe's\nDiner"], "objects": ["door"],
                         "time_of_day": "unknown", "search_phrases": ["diner at night"]})
    assert field_lines(text) == [("caption", "A shop front."), ("objects", "door"),
                                 ("visible text", "OPEN 24h, Joe's Diner"), ("phrases", "diner at night")]
    assert [t.stem for t in query_terms("Running dogs and the dog")] == ["run", "dog"]


def test_only_rare_words_count_as_exact_evidence(tmp_path):
    # 400 photos of dogs, one of them with a zebra: "dog" is left to meaning, "zebra" is evidence.
    texts = [lexical_text({"caption": f"A dog in scene {i}."}) for i in range(399)]
    texts.append(lexical_text({"caption": "A dog chasing a zebra."}))
    LexicalIndex.build([indexed_text(t) for t in texts]).save(tmp_path / "lex")
    index = LexicalIndex.load(tmp_path / "lex")
    assert not index.scores("dog").raw.any()
    both = index.scores("dog zebra")
    assert np.flatnonzero(both.raw).tolist() == [399]
    assert 0.3 < both.normalised(np.array([399]))[0] < 1, "the common word still counts in the share asked for"


def test_words_written_on_a_photo_count_even_when_common_weighted_by_how_rare_they_are(tmp_path):
    # 300 shop fronts, half with a sign saying SHOP; one sign reads "OPEN SHOP". Among whole
    # descriptions "shop" is too common to be rare-word evidence; written on a photo it still
    # counts, but "open" (rarer in descriptions) counts for more of a query naming both.
    texts = [lexical_text({"caption": f"A shop front in street {i}.", "text": ["SHOP"] if i % 2 else []})
             for i in range(300)]
    texts.append(lexical_text({"caption": "A shop front with a sign.", "text": ["OPEN SHOP"]}))
    assert visible_text(texts[-1]) == "OPEN SHOP" and visible_text(texts[0]) == ""
    LexicalIndex.build([indexed_text(t) for t in texts]).save(tmp_path / LEXICAL_DIR)
    LexicalIndex.build([visible_text(t) for t in texts]).save(tmp_path / VISIBLE_TEXT_DIR)
    words, written = LexicalIndex.load(tmp_path / LEXICAL_DIR), LexicalIndex.load(tmp_path / VISIBLE_TEXT_DIR)
    assert not words.scores("shop").raw.any(), "too common to be rare-word evidence"
    shop = written.written_share("shop", words)
    assert np.flatnonzero(shop.raw).tolist() == [i for i in range(301) if i % 2 or i == 300]
    assert shop.normalised(np.array([1, 300, 0])).tolist() == [1.0, 1.0, 0.0]
    open_shop = written.written_share("open shop", words)
    assert open_shop.top(1).tolist() == [300]
    share = open_shop.normalised(np.array([300, 1]))
    assert share[0] == pytest.approx(1.0) and 0 < share[1] < 0.5, "'open' is the rarer, weightier word"
    assert written.written_share("open sign", words).normalised(np.array([300]))[0] < 1, "'sign' is not written"


def test_the_best_exact_rows_that_pass_are_the_first_of_the_full_order():
    """_best_exact takes the exact-word rows a chunk at a time (ties kept whole) until enough
    pass the generation's filters (checked every row at once when that needs no query): the
    same rows, in the same order, as sorting them all."""
    from imgrag.index.lexical import LexicalScores
    from imgrag.search.ranking import LEXICAL_CANDIDATES, _best_exact

    class Filtered:  # a generation whose own filters pass the rows of a mask
        filtered = True

        def __init__(self, mask: np.ndarray, in_memory: bool) -> None:
            self.mask, self.filters_in_memory = mask, in_memory

        def passing(self, rows: np.ndarray, enough: int | None = None) -> np.ndarray:
            return rows[self.mask[rows]]

    rng = np.random.default_rng(3)
    for share in (0.002, 0.05, 0.5, 1.0):
        raw = np.zeros(50_000, np.float32)
        rows = np.sort(rng.choice(len(raw), 20_000, replace=False))
        raw[rows] = rng.integers(1, 8, len(rows))  # many ties
        evidence = LexicalScores(terms=[], raw=raw, ideal=1.0)
        mask = rng.random(len(raw)) < share
        everything = evidence.top(len(raw))
        allowed = np.sort(rng.choice(len(raw), 30_000, replace=False))
        for allow in (None, allowed):
            want = everything if allow is None else everything[np.isin(everything, allow)]
            want = want[mask[want]][:LEXICAL_CANDIDATES]
            for in_memory in (False, True):  # a chunk at a time (SQL), or every row at once
                found = _best_exact(Filtered(mask, in_memory), evidence, allow)
                assert found.tolist() == want.tolist(), (share, allow is None, in_memory)
