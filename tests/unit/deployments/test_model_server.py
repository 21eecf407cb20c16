"""A dedicated version's batches are bounded in requests and in texts through the one size
Serve's batcher knows (`batch_size`)."""

from __future__ import annotations

import itertools
import random

from deployments.replicas.model_server import _Item, batch_size


def _items(sizes: list[int], max_batch_size: int, max_batch_texts: int) -> list[_Item]:
    return [_Item(["t"] * n, 0.0, max_batch_size, max_batch_texts) for n in sizes]


def _cases() -> list[tuple[int, int, list[int]]]:
    """(max_batch_size, max_batch_texts, request sizes): every small case, then random
    longer queues; no request over max_batch_texts."""
    cases = []
    for max_size, max_texts in itertools.product(range(1, 7), range(1, 9)):
        for n in range(1, 4):
            for sizes in itertools.product(range(1, max_texts + 1), repeat=n):
                cases.append((max_size, max_texts, list(sizes)))
    rng = random.Random(11)
    for _ in range(5000):
        max_size, max_texts = rng.randrange(1, 40), rng.randrange(1, 300)
        sizes = [rng.randrange(1, max_texts + 1) for _ in range(rng.randrange(1, 50))]
        cases.append((max_size, max_texts, sizes))
    return cases


def test_within_max_batch_texts_exactly_when_both_bounds_hold() -> None:
    for max_size, max_texts, sizes in _cases():
        both_hold = len(sizes) <= max_size and sum(sizes) <= max_texts
        size = batch_size(_items(sizes, max_size, max_texts))
        assert (size <= max_texts) == both_hold, (max_size, max_texts, sizes, size)
        assert size >= min(sum(sizes), max_texts)  # never below the texts it holds


def test_an_oversized_request_counts_as_max_batch_texts() -> None:
    for max_size, max_texts in [(1, 1), (4, 8), (16, 256), (64, 128)]:
        assert batch_size(_items([max_texts * 3], max_size, max_texts)) == max_texts
        assert batch_size(_items([max_texts + 1], max_size, max_texts)) == max_texts
        # Alone it fits Serve's bound and runs; with any other request it does not.
        assert batch_size(_items([max_texts * 3, 1], max_size, max_texts)) > max_texts
        assert batch_size(_items([1, max_texts * 3], max_size, max_texts)) > max_texts


def test_the_newest_item_carries_the_live_bounds() -> None:
    # Queued under (2 requests, 8 texts), then the live config changed to (4, 8).
    old = _Item(["t"], 0.0, 2, 8)
    new = _Item(["t"], 0.0, 4, 8)
    assert batch_size([old, old, old]) > 8  # 3 requests > 2
    assert batch_size([old, old, new]) <= 8  # 3 requests <= 4


def test_greedy_batches_as_serve_fills_them_stay_within_both_bounds() -> None:
    """Serve adds queued items to a batch while the size stays within its bound (set
    to `max_batch_texts`); a first item alone over the bound would be refused."""
    rng = random.Random(7)
    for _ in range(200):
        max_size, max_texts = rng.randrange(1, 20), rng.randrange(1, 64)
        queue = _items([rng.randrange(1, 2 * max_texts) for _ in range(50)], max_size, max_texts)
        while queue:
            assert batch_size(queue[:1]) <= max_texts  # never refused
            batch = [queue.pop(0)]
            while queue and batch_size([*batch, queue[0]]) <= max_texts:
                batch.append(queue.pop(0))
            assert len(batch) <= max_size
            assert len(batch) == 1 or sum(len(i.texts) for i in batch) <= max_texts
