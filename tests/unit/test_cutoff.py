"""The default result set (imgrag.search.cutoff): a one-concept query shows the photos of that
concept and not the near misses, an off-topic query shows nothing, and --all, --min-score
and --limit override it. In process on a 40-photo index (enough for the background
sample); through the command in tests/e2e/test_cutoff_cli.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import described_generation
from imgrag.index.embedding import DEFAULT_MODEL, load_model
from imgrag.index.generations import open_generation
from imgrag.search.cutoff import BACKGROUND_MIN, DEFAULT_CUTOFF, background_for, shown
from imgrag.search.ranking import SearchOptions, rank
from imgrag.store.paths import BACKGROUND_FILE
from imgrag.store.workspace import Workspace

CAPTIONS = {
    "giraffe_1": "A tall giraffe eating leaves from the top of an acacia tree.",
    "giraffe_2": "Two giraffes standing in a grassy enclosure at the zoo.",
    "giraffe_3": "A baby giraffe next to its mother on the savanna.",
    "zebra_1": "A herd of zebras grazing on dry grass.",
    "zebra_2": "A zebra standing alone in a dusty field.",
    "elephant": "An elephant spraying water with its trunk at a watering hole.",
    "cows": "Black and white cows lying in a green pasture.",
    "panda": "A panda chewing bamboo in a zoo enclosure.",
    "horse": "A brown horse running along a wooden fence.",
    "sheep": "A flock of sheep on a hillside in the fog.",
    "dog_beach": "A brown dog running on a sandy beach by the sea.",
    "dog_frisbee": "A dog leaping to catch a frisbee in a park.",
    "dog_snow": "A husky dog pulling a sled through the snow.",
    "cat_sofa": "A grey cat asleep on a sofa cushion.",
    "kitchen_1": "A kitchen with a red kettle on a gas stove.",
    "kitchen_2": "A modern kitchen with white cabinets and a steel refrigerator.",
    "stop_sign": "A red stop sign at a street corner.",
    "traffic": "Cars waiting at a red traffic light at a crossing.",
    "bus": "A city bus stopped at a bus stop in the rain.",
    "bicycle": "A bicycle leaning against a brick wall.",
    "motorbike": "A man riding a motorcycle on a mountain road.",
    "train": "A steam train crossing a stone bridge.",
    "boat": "A small fishing boat moored in a harbour.",
    "plane": "A passenger plane taking off from a runway.",
    "broccoli": "A plate of steamed broccoli and carrots.",
    "pizza": "A pepperoni pizza on a wooden board.",
    "cake": "Children blowing out candles on a birthday cake.",
    "coffee": "A latte with foam art in a coffee shop.",
    "laptop": "A laptop and a notebook on an office desk.",
    "tennis": "A woman hitting a tennis ball on a clay court.",
    "surfer": "A surfer riding a big wave in the ocean.",
    "skier": "A skier going down a steep snowy slope.",
    "skate": "A boy doing a trick on a skateboard in a skate park.",
    "football": "Two teams playing football in a stadium.",
    "guitar": "A man playing guitar on a stage under bright lights.",
    "market": "People shopping at a busy fruit market.",
    "wedding": "A bride and groom cutting their wedding cake.",
    "mountain": "A snowy mountain peak above a lake at sunrise.",
    "city": "A city skyline at night with lit skyscrapers.",
    "library": "Rows of books on shelves in an old library.",
}
NAMES = list(CAPTIONS)
OFF_TOPIC = ["invoice number 4471", "quarterly tax spreadsheet", "python stack trace"]


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def generation(model, tmp_path_factory):
    descriptions = {name: {"caption": caption} for name, caption in CAPTIONS.items()}
    with described_generation(tmp_path_factory.mktemp("cutoff"), descriptions, model) as generation:
        yield generation


def search(generation, model, query, **options):
    return [h.sha256 for h in rank(generation, model.encode([query])[0], query, SearchOptions(**options))]


@pytest.mark.parametrize("query, expected", [
    ("giraffe", {"giraffe_1", "giraffe_2", "giraffe_3"}),
    ("zebra", {"zebra_1", "zebra_2"}),
    ("kitchen", {"kitchen_1", "kitchen_2"}),
    ("stop sign", {"stop_sign"}),
    ("dog", {"dog_beach", "dog_frisbee", "dog_snow"}),
    ("bike", {"bicycle"}),  # no description says "bike": by meaning alone, and not the motorcycle
    ("car", {"traffic"}),  # "Cars waiting at ...": the word counts in any form
])
def test_a_one_concept_query_shows_that_concept_and_not_its_neighbours(generation, model, query, expected):
    assert set(search(generation, model, query)) == expected


@pytest.mark.parametrize("query", OFF_TOPIC)
def test_an_off_topic_query_shows_nothing(generation, model, query):
    assert search(generation, model, query) == []
    assert len(search(generation, model, query, show_all=True)) == 10, "--all still ranks the nearest"


def test_the_default_set_keeps_the_ranking_order(generation, model):
    for query in ("giraffe", "dog", "a dog playing outside"):
        everything = search(generation, model, query, show_all=True, limit=len(NAMES))
        default = search(generation, model, query, limit=len(NAMES))
        assert default and default == [n for n in everything if n in default], "only which hits, never their order"


def test_min_score_and_limit_override(generation, model):
    assert len(search(generation, model, "giraffe", min_score=0.0, limit=len(NAMES))) == len(NAMES)
    assert search(generation, model, "giraffe", limit=2) == search(generation, model, "giraffe", limit=3)[:2]
    assert len(search(generation, model, "invoice number 4471", min_score=0.0)) == 10


def test_like_shows_the_photos_like_it(generation, model):
    """--like: the photo's own vector against the others; the photo itself weighs in nothing."""
    row = {d.sha256: r for r, d in generation.docs(list(range(generation.size))).items()}["giraffe_1"]
    vec = np.asarray(generation.index.reconstruct(row), dtype=np.float32)
    hits = rank(generation, vec, CAPTIONS["giraffe_1"], SearchOptions(), exclude_rows=[row])
    assert {h.sha256 for h in hits} == {"giraffe_2", "giraffe_3"}
    assert [h.rank for h in hits] == [1, 2]


def test_the_background_is_the_query_against_a_sample_of_the_photos(generation, model):
    assert generation.background is not None and len(generation.background) == len(NAMES) >= BACKGROUND_MIN
    vec = model.encode(["giraffe"])[0]
    bg = background_for(generation.background, vec, DEFAULT_CUTOFF)
    sims = np.asarray(generation.background, np.float32) @ vec
    assert bg.centre == pytest.approx(float(np.median(sims)))
    assert bg.spread >= DEFAULT_CUTOFF.spread_floor
    assert background_for(generation.background[: BACKGROUND_MIN - 1], vec, DEFAULT_CUTOFF) is None


def test_word_evidence_lowers_the_bar():
    scores = np.array([0.3, 0.3], dtype=np.float32)
    assert shown(scores, np.array([1.0, 0.0]), None, DEFAULT_CUTOFF).tolist() == [True, False]
    assert bool(shown(np.array([0.5]), np.array([0.0]), None, DEFAULT_CUTOFF)[0]), "a high score needs no word"


def test_a_half_match_far_below_the_best_hit_is_left_out():
    scores = np.array([0.8, 0.5], dtype=np.float32)  # 0.3 apart: more than the gap
    assert shown(scores, np.array([0.5, 0.5]), None, DEFAULT_CUTOFF).tolist() == [True, False]
    assert shown(scores, np.array([0.5, 1.0]), None, DEFAULT_CUTOFF).tolist() == [True, True], "unless it has every word"


def test_an_index_without_a_background_still_chooses_a_set(generation, model, tmp_path):
    saved = tmp_path / BACKGROUND_FILE
    shutil.move(str(generation.folder / BACKGROUND_FILE), saved)
    try:
        old = open_generation(Workspace(generation.folder.parent.parent))
        assert old.background is None
        assert set(search(old, model, "giraffe")) == {"giraffe_1", "giraffe_2", "giraffe_3"}
        assert search(old, model, "invoice number 4471") == []
        old.db.close()
    finally:
        shutil.move(str(saved), generation.folder / BACKGROUND_FILE)


def test_words_present_counts_common_words_too(generation):
    rows = np.arange(generation.size)
    share = generation.lexical.words_present("dog beach", rows)
    names = [generation.docs([int(r)])[int(r)].sha256 for r in rows]
    by_name = dict(zip(names, share.tolist(), strict=True))
    assert by_name["dog_beach"] == pytest.approx(1.0)
    assert 0 < by_name["dog_snow"] < 1 and by_name["kitchen_1"] == 0


def test_words_present_by_binary_search_is_the_masks(generation):
    """Each word's rows are in order (bm25s writes them so): words_present looks each shown
    row up in them (a mask of every row cost 2 ms a search at 1M photos); rows whose words
    are out of order fall back to the mask, with the same shares."""
    lexical = generation.lexical
    rows = np.random.default_rng(0).permutation(generation.size)
    assert lexical._postings_sorted()
    by_search = lexical.words_present("dog beach giraffe kitchen", rows)
    lexical._sorted = False
    try:
        by_mask = lexical.words_present("dog beach giraffe kitchen", rows)
    finally:
        lexical._sorted = None
    assert by_search.tolist() == pytest.approx(by_mask.tolist()) and by_search.max() > 0
