"""CUDA graphs of a torch embedder: one per padded input shape, replayed per batch.

A small encoder on a fast GPU spends most of a small batch waiting for the CPU to
launch its kernels one by one (about a hundred for six layers); a CUDA graph launches
them all at once. A graph runs one fixed shape, so each micro-batch is padded up to a
bucket: its rows to a power of two, its width to a multiple of 16 (of 64 past 128
tokens). Padding columns are masked out of attention and pooling; padding rows hold
one unmasked token so their softmax stays finite, and are dropped. Graphs are captured
once per bucket, into one shared memory pool, and replayed one at a time; micro-batches
of more than `MAX_ROWS` texts run eagerly.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.text import Float32Array, Int64Array

log = logging.getLogger(__name__)

WIDTH_STEP = 16
WIDE_STEP = 64
WIDE_FROM = 128
# Micro-batches of more rows run eagerly: a batch that large keeps the GPU busy between
# launches anyway (256 x 128 tokens: 0.98-1.02x eager fp16 on an H200), and each larger
# bucket would hold its activations in the pool.
MAX_ROWS = 256


def row_bucket(rows: int, top: int) -> int:
    """The graph's row count for `rows` texts: the next power of two, at most `top`."""
    if rows < 1 or rows > top:
        raise ValueError(f"rows must be in 1..{top}, got {rows}")
    return min(1 << (rows - 1).bit_length(), top)


def width_bucket(width: int, top: int) -> int:
    """The graph's width for `width` tokens: the next multiple of 16 up to 128 tokens,
    of 64 beyond, at most `top`."""
    if width < 1 or width > top:
        raise ValueError(f"width must be in 1..{top}, got {width}")
    step = WIDTH_STEP if width <= WIDE_FROM else WIDE_STEP
    return min(-(-width // step) * step, top)


def buckets(rows_top: int, width_top: int) -> list[tuple[int, int]]:
    """Every (rows, width) shape a batch can be padded to, largest first."""
    rows = sorted({row_bucket(n, rows_top) for n in range(1, rows_top + 1)}, reverse=True)
    widths = sorted({width_bucket(w, width_top) for w in range(1, width_top + 1)}, reverse=True)
    return [(r, w) for r in rows for w in widths]


def pad_to(
    input_ids: Int64Array, attention_mask: Int64Array, rows: int, width: int
) -> tuple[Int64Array, Int64Array]:
    """The batch padded to `rows` x `width`: zeros (the pad token) and a zero mask, with
    the first token of each padding row unmasked."""
    n, w = input_ids.shape
    ids = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    ids[:n, :w] = input_ids
    mask[:n, :w] = attention_mask
    mask[n:, 0] = 1
    return ids, mask


@dataclass
class _Graph:
    graph: Any
    ids: Any
    mask: Any
    out: Any


class ShapeGraphs:
    """Captures and replays the model's CUDA graphs, one per bucket.

    `run` returns None when graphs cannot serve the batch (capture failed, or the
    shape is past the buckets); the caller then runs the model eagerly.
    """

    def __init__(self, model: Any, device: str, rows_top: int, width_top: int) -> None:
        self._model = model
        self._device = device
        self.rows_top = rows_top
        self.width_top = width_top
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: Any = None  # the memory pool every graph shares, from the first capture
        self._lock = threading.Lock()
        self.failure: str | None = None
        self.capture_s = 0.0

    @property
    def active(self) -> bool:
        """Whether graphs serve batches (false once a capture failed)."""
        return self.failure is None

    @property
    def count(self) -> int:
        """Graphs captured so far."""
        return len(self._graphs)

    def prepare(self) -> None:
        """Capture every bucket now, largest first (the pool then fits the largest), so
        no request waits for a capture."""
        with self._lock:
            for shape in buckets(self.rows_top, self.width_top):
                if self._get(shape) is None:
                    return
        log.info(
            "captured %d CUDA graphs (up to %d rows x %d tokens) in %.1f s",
            self.count,
            self.rows_top,
            self.width_top,
            self.capture_s,
        )

    def run(self, input_ids: Int64Array, attention_mask: Int64Array) -> Float32Array | None:
        """Embeddings of one padded micro-batch by graph replay, or None (run eagerly)."""
        import torch

        n, w = input_ids.shape
        if not self.active or n > self.rows_top or w > self.width_top:
            return None
        shape = (row_bucket(n, self.rows_top), width_bucket(w, self.width_top))
        ids, mask = pad_to(input_ids, attention_mask, *shape)
        with self._lock, torch.inference_mode():
            g = self._get(shape)
            if g is None:
                return None
            g.ids.copy_(torch.from_numpy(ids))
            g.mask.copy_(torch.from_numpy(mask))
            g.graph.replay()
            out = g.out[:n].float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def _get(self, shape: tuple[int, int]) -> _Graph | None:
        """The bucket's graph, captured on first use (the lock is held)."""
        g = self._graphs.get(shape)
        if g is not None or self.failure is not None:
            return g
        start = time.perf_counter()
        try:
            g = self._capture(*shape)
        except Exception as exc:  # any capture failure means: run eagerly
            self.failure = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed at %s, running eagerly: %s", shape, exc)
            return None
        self.capture_s += time.perf_counter() - start
        self._graphs[shape] = g
        return g

    def _capture(self, rows: int, width: int) -> _Graph:
        import torch

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            ids = torch.zeros((rows, width), dtype=torch.int64, device=self._device)
            mask = torch.zeros((rows, width), dtype=torch.int64, device=self._device)
            mask[:, 0] = 1
            # Warm up on a side stream first (lazy initialisation must not be captured).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._model(ids, mask)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._model(ids, mask)
            torch.cuda.synchronize()
        return _Graph(graph, ids, mask, out)
