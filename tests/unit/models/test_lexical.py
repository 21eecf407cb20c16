"""The lexical index: exact SKU and brand matches first, text analysis, live upserts and
removes, the key mask, scores that equal a fresh index's (and bm25s's) whatever the
history of writes and compactions, searches during writes."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from models import lexical
from models.errors import InvalidInputError
from models.lexical import CorpusStats, LexicalIndex, StaleStats, tokenize

FIELDS = {"title": 2.0, "brand": 1.0, "description": 1.0}
CATALOG: dict[int, dict[str, str]] = {
    1: {
        "title": "Acme AB-1234 cordless drill",
        "brand": "Acme",
        "description": "A compact drill with two batteries.",
    },
    2: {
        "title": "Bolt AB-1235 cordless drill",
        "brand": "Bolt",
        "description": "Fits AB series chargers, the 1234 adapter and Acme batteries.",
    },
    3: {
        "title": "Bolt XY-1234 impact driver",
        "brand": "Bolt",
        "description": "Driver for ab and xy bits; works like the Acme AB-1234 drill does.",
    },
    4: {
        "title": "Running shoes for men",
        "brand": "Stride",
        "description": "Men's lightweight running shoes with a cushioned sole.",
    },
    5: {
        "title": "Café espresso cups",
        "brand": "Crema",
        "description": "Two porcelain cups; runs in any dishwasher.",
    },
}

NOUNS = "drill driver saw sander kettle teapot lamp cable charger battery case".split()
ADJECTIVES = "red blue black compact cordless heavy light steel wooden smart".split()
BRANDS = "acme bolt stride crema lumen volta".split()


def keys_of(results: list[tuple[int, float]]) -> list[int]:
    return [key for key, _ in results]


def catalog_index(**kwargs: object) -> LexicalIndex:
    index = LexicalIndex(FIELDS, **kwargs)  # type: ignore[arg-type]
    index.upsert(list(CATALOG), list(CATALOG.values()))
    return index


def product(rng: random.Random, key: int, words: int = 10) -> dict[str, str]:
    """A short product text over a small vocabulary, so documents share many terms."""
    title = [rng.choice(ADJECTIVES) for _ in range(words // 2)]
    title += [rng.choice(NOUNS) for _ in range(words - len(title))]
    return {
        "title": f"{' '.join(title)} SK-{key:05d}",
        "brand": rng.choice(BRANDS),
        "description": " ".join(rng.choice(NOUNS + ADJECTIVES) for _ in range(3 * words)),
    }


@pytest.mark.parametrize("query", ["AB-1234", "ab-1234", "ab1234", "AB 1234"])
def test_exact_sku_ranks_its_item_first(query: str) -> None:
    assert keys_of(catalog_index().search(query, 3))[0] == 1


@pytest.mark.parametrize(("query", "key"), [("Acme", 1), ("bolt", 2), ("STRIDE", 4)])
def test_brand_ranks_its_items_first(query: str, key: int) -> None:
    results = catalog_index().search(query, 5)
    assert results[0][0] == key
    if query == "Acme":  # the other mentions of the brand come later
        assert set(keys_of(results)) == {1, 2, 3}


@pytest.mark.parametrize(
    ("query", "key"),
    [("run shoe", 4), ("RUNNING SHOES", 4), ("mens shoe", 4), ("cafe cup", 5), ("CAFÉ", 5)],
)
def test_stemming_case_and_accents(query: str, key: int) -> None:
    assert keys_of(catalog_index().search(query, 1)) == [key]


def test_tokenize() -> None:
    assert tokenize("AB-1234") == ["ab", "1234", "ab1234"]
    assert tokenize("ab1234") == ["ab", "1234", "ab1234"]
    assert tokenize("The Running Shoes of Men's") == ["run", "shoe", "men"]
    assert tokenize("USB-C cable, 2.5mm") == ["usb", "c", "usbc", "cabl", "2", "5", "mm", "25mm"]
    assert tokenize("Crème Brûlée", stem=False) == ["creme", "brulee"]
    assert tokenize("the and of", stopwords=False, stem=False) == ["the", "and", "of"]
    assert tokenize("the and of") == []


def test_stopword_only_and_unknown_queries_find_nothing() -> None:
    index = catalog_index()
    assert index.search("the of and", 5) == []
    assert index.search("zeppelin", 5) == []
    assert index.search("drill", 0) == []


@pytest.mark.parametrize("compacted", [False, True])
def test_upsert_replaces_the_text(compacted: bool) -> None:
    index = catalog_index()
    if compacted:
        index.compact()
    index.upsert([5], [{"title": "Glass teapot", "brand": "Crema"}])
    assert index.search("espresso cups", 5) == []
    assert keys_of(index.search("teapot", 5)) == [5]
    assert len(index) == 5


@pytest.mark.parametrize("compacted", [False, True])
def test_removed_keys_are_never_returned(compacted: bool) -> None:
    index = catalog_index()
    if compacted:
        index.compact()
    assert index.remove([1, 3, 99]) == 2
    assert 1 not in keys_of(index.search("AB-1234 acme drill", 10))
    assert keys_of(index.search("AB-1234 acme drill", 10)) == [2]
    assert index.remove([1]) == 0
    assert len(index) == 3
    index.compact()
    assert keys_of(index.search("acme", 10)) == [2]


def test_last_text_wins_for_a_key_given_twice() -> None:
    index = LexicalIndex()
    index.upsert([7, 7], ["red kettle", "blue lamp"])
    assert index.search("kettle", 5) == []
    assert keys_of(index.search("lamp", 5)) == [7]


@pytest.mark.parametrize("compacted", [False, True])
def test_allowed_mask_still_gives_k_results(compacted: bool) -> None:
    index = LexicalIndex()
    # the best matches (many "widget"s) are the odd keys, which the mask leaves out
    index.upsert(list(range(40)), [("widget " * (1 + key % 2)).strip() for key in range(40)])
    if compacted:
        index.compact()
    allowed = np.zeros(30, np.bool_)  # keys 30..39 are past its end: not allowed
    allowed[::2] = True
    results = index.search("widget", 5, allowed)
    assert len(results) == 5
    assert all(key % 2 == 0 and key < 30 for key in keys_of(results))
    assert len(index.search("widget", 100, allowed)) == 15
    assert index.search("widget", 5, np.zeros(0, np.bool_)) == []


def test_rejects_bad_inputs() -> None:
    index = LexicalIndex()
    with pytest.raises(InvalidInputError, match="boolean mask"):
        index.search("x", 5, np.ones(3, np.int64))
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search("x", -1)
    with pytest.raises(InvalidInputError, match="keys must be"):
        index.upsert([-1], ["x"])
    with pytest.raises(InvalidInputError, match="keys must be"):
        index.remove([1.5])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="2 keys for 1"):
        index.upsert([1, 2], ["x"])
    with pytest.raises(InvalidInputError, match="not a string"):
        index.upsert([1], [{"title": 3}])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="field weights"):
        LexicalIndex({"title": -1.0})


def scores_of(index: LexicalIndex, query: str) -> dict[int, float]:
    return dict(index.search(query, 10_000))


QUERIES = ["red drill", "acme cordless charger", "SK-00042", "steel", "lumen lamp cable"]


def assert_same_scores(a: LexicalIndex, b: LexicalIndex) -> None:
    for query in QUERIES:
        got, want = scores_of(a, query), scores_of(b, query)
        assert got.keys() == want.keys(), query
        assert got == pytest.approx(want, rel=1e-9), query


def test_statistics_of_a_generation_score_only_at_that_generation() -> None:
    """A shard scores with summed statistics only while its index is at the generation
    its part was read at, and only if they hold every query term it has; otherwise its
    own part comes back (`StaleStats`), read from the state it checked."""
    index = catalog_index()
    query = "acme cordless drill"
    generation, stats = index.stats_at(query)
    assert stats == index.stats(query)
    asked = CorpusStats(stats.n_docs, stats.total_length, {t: stats.df.get(t, 0) for t in
                        lexical.tokenize(query)})  # fmt: skip
    assert keys_of(index.search(query, 5, stats=asked, generation=generation)) == keys_of(
        index.search(query, 5)
    )
    partial = CorpusStats(stats.n_docs, stats.total_length, {"drill": stats.df["drill"]})
    with pytest.raises(StaleStats) as missing:  # a term it holds is not in them
        index.search(query, 5, stats=partial, generation=generation)
    assert (missing.value.generation, missing.value.stats) == (generation, stats)
    index.upsert([9], [{"title": "cordless drill"}])
    with pytest.raises(StaleStats) as moved:
        index.search(query, 5, stats=asked, generation=generation)
    assert moved.value.generation != generation
    assert moved.value.stats == index.stats(query)
    assert moved.value.stats.df["drill"] == stats.df["drill"] + 1
    # A query none of whose terms this index holds is stale too: its documents and
    # their length are in the sum every other shard scores with.
    unknown_at, unknown = index.stats_at("zzz")
    assert unknown.df == {}
    index.upsert([10], [{"title": "teapot"}])
    with pytest.raises(StaleStats):
        index.search("zzz", 5, stats=unknown, generation=unknown_at)
    removed = index.stats_at(query)[0]
    assert index.remove([12345]) == 0  # nothing removed: nothing published
    assert index.stats_at(query)[0] == removed
    index.remove([9])
    assert index.stats_at(query)[0] != removed
    before = index.stats_at(query)[0]
    index.compact()  # scores unchanged, but the sums may differ in the last bit
    assert index.stats_at(query)[0] != before
    # Two indexes (two catalogs, or one on a restarted replica) never share generations.
    assert catalog_index().stats_at(query)[0] != catalog_index().stats_at(query)[0]


def test_delta_and_compactions_score_like_a_fresh_index() -> None:
    rng = random.Random(7)
    live: dict[int, Mapping[str, str]] = {}
    # a compaction every ~25 writes of the history below, done inside the write
    index = LexicalIndex(FIELDS, max_delta_docs=25, background=False)
    for step in range(300):
        if step % 4 == 3 and live:
            gone = rng.sample(sorted(live), min(3, len(live)))
            index.remove(gone)
            for key in gone:
                del live[key]
        else:
            keys = [rng.randrange(120) for _ in range(rng.randint(1, 6))]
            docs = [product(rng, key) for key in keys]
            index.upsert(keys, docs)
            live.update(zip(keys, docs, strict=True))
    fresh = LexicalIndex(FIELDS)
    fresh.upsert(list(live), list(live.values()))  # all in the delta
    assert len(index) == len(fresh) == len(live)
    assert_same_scores(index, fresh)
    fresh.compact()  # all in the base
    assert_same_scores(index, fresh)
    index.compact()
    assert_same_scores(index, fresh)


def test_scores_equal_bm25s_on_the_same_tokens() -> None:
    bm25s = pytest.importorskip("bm25s")
    rng = random.Random(3)
    docs = [product(rng, key) for key in range(200)]
    index = LexicalIndex(FIELDS)
    index.upsert(list(range(200)), docs)
    index.compact()
    # a field of weight 2 is the same as its tokens written twice
    corpus = [
        2 * tokenize(d["title"]) + tokenize(d["brand"]) + tokenize(d["description"]) for d in docs
    ]
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(corpus, show_progress=False)
    for query in QUERIES:
        terms = sorted(set(tokenize(query)))
        want = reference.get_scores(terms)
        got = scores_of(index, query)
        assert got, query
        assert {key: want[key] for key in np.flatnonzero(want)} == pytest.approx(got, rel=1e-5)


def test_searches_during_writes_never_return_removed_keys() -> None:
    rng = random.Random(11)
    index = LexicalIndex(FIELDS, max_delta_docs=30)  # compactions in the background
    live = {key: product(rng, key) for key in range(400)}
    index.upsert(list(live), list(live.values()))
    index.compact()
    removed: list[int] = []  # appended only once the remove returned
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for key in range(150):
                keys = [rng.randrange(200, 400) for _ in range(8)]
                docs = [product(rng, k) for k in keys]
                index.upsert(keys, docs)
                live.update(zip(keys, docs, strict=True))
                index.remove([key])
                del live[key]
                removed.append(key)
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                before = set(removed[: len(removed)])
                found = keys_of(index.search("drill saw lamp acme bolt", 1_000))
                assert not before & set(found)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(index) == 250
    assert not set(removed) & set(keys_of(index.search("drill saw lamp acme bolt", 1_000)))
    # writes replayed over compactions that ran meanwhile lost nothing
    fresh = LexicalIndex(FIELDS)
    fresh.upsert(list(live), list(live.values()))
    assert_same_scores(index, fresh)


def test_build_time_of_100k_products(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints, never asserts: loading 100k products, merging them into a base, a write
    and a search beside a full delta. The texts repeat from a pool of 2k and their
    tokenization is cached here, to stay quick: tokenizing 100k distinct texts takes
    seconds more (see models/lexical.py)."""
    monkeypatch.setattr(lexical, "tokenize", functools.cache(lexical.tokenize))
    rng = random.Random(5)
    n = 100_000
    pool = [product(rng, key) for key in range(2_000)]
    index = LexicalIndex(FIELDS, background=False, max_delta_docs=n)
    start = time.perf_counter()
    index.upsert(list(range(n)), [pool[key % len(pool)] for key in range(n)])
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    index.compact()
    merge_s = time.perf_counter() - start
    index.upsert(list(range(2_000)), pool)
    start = time.perf_counter()
    index.upsert(list(range(100)), pool[:100])
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(20):
        index.search("red cordless drill", 10)
    search_s = (time.perf_counter() - start) / 20
    with capsys.disabled():
        print(
            f"\nlexical index, 100k products: load {load_s:.2f} s, merge {merge_s:.2f} s,"
            f" write of 100 beside a 2k delta {write_s * 1e3:.1f} ms,"
            f" search {search_s * 1e3:.2f} ms"
        )


def test_only_short_words_are_cached() -> None:
    """A compound word can be a whole 32 KB text: caching such words (100,000 of them)
    would hold gigabytes; a long word is analysed alike, only not kept."""
    from models import lexical

    long_word = "-".join(f"a{i}" for i in range(4000))
    short = "trail-runner"
    assert tokenize(f"{short} {long_word}")[:3] == tokenize(short)
    assert tokenize(long_word) == list(lexical._terms_of(long_word, True, True))
    for cache in lexical._WORD_CACHES.values():
        assert all(len(word) <= lexical._WORD_CACHE_MAX_CHARS for word in cache)
    assert any(short in cache for cache in lexical._WORD_CACHES.values())


def test_words_no_document_holds_are_dropped_by_a_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One small catalog's item rewritten with new words again and again never made a
    large delta nor many dead documents, so every word ever written stayed."""
    from models import lexical

    monkeypatch.setattr(lexical, "MAX_DEAD_TERMS", 100)
    index = LexicalIndex(background=False)
    index.upsert([1, 2], ["steady hiking boots", "wool socks"])
    rng = random.Random(5)
    first = ""
    for _ in range(300):
        words = " ".join("".join(rng.choices("bcdfghjklmnpqrstvz", k=12)) for _ in range(5))
        first = first or words
        index.upsert([1], [words])
        live = int(np.count_nonzero(index._df[: len(index._terms)] > 0))
        assert index._live_terms == live
        assert len(index._terms) <= 2 * 100 + live + 5
    assert [k for k, _ in index.search(words.split()[0], 5)] == [1]
    assert index.search(first, 5) == []
    assert [k for k, _ in index.search("socks", 5)] == [2]
