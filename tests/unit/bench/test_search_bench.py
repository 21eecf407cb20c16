"""The search benchmark's inputs: a query pool without repeats and a Zipf stream."""

from __future__ import annotations

from collections import Counter

import orjson

from bench.search import CATALOG, ZIPF_EXPONENT, K, catalog_items, search_bodies, zipf_stream


def test_the_query_pool_has_no_repeats_and_items_are_upsert_bodies() -> None:
    items, queries = catalog_items(300)
    assert len(items) == 300
    assert len(set(queries)) == len(queries) > 300
    assert {"id", "text", "attributes"} == set(items[0])
    body = orjson.loads(search_bodies(queries[:1])[0])
    assert body == {"catalog": CATALOG, "query": queries[0], "k": K}


def test_the_zipf_stream_follows_its_exponent() -> None:
    stream = zipf_stream(2000, 50_000)
    assert stream == zipf_stream(2000, 50_000)  # deterministic
    counts = Counter(stream)
    # Rank 1 against rank 10: (10 / 1) ** 1.1, within sampling noise.
    ratio = counts[0] / counts[9]
    assert abs(ratio - 10**ZIPF_EXPONENT) / 10**ZIPF_EXPONENT < 0.2
    assert len(counts) > 1000  # the tail is drawn too
