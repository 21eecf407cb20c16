"""How long a batch of n texts takes on one version, fitted to its recent batches.

A batch costs a fixed part (the call, the session's setup, the padding) plus a part
per text: t(n) = a + b * n. Counting texts/s alone makes eight single-text batches
look eight times as long as one batch of eight, which is what the next batch is; on
a slow phase of the machine that refuses requests that would be answered in time.

The model keeps a shape and a level. The shape, a / b, comes from pairs of
consecutive batches of clearly different sizes (close in time, so a change of the
machine's speed between them is rare), smoothed over pairs. The level, b, follows
every batch's time under that shape (a geometric mean, so one stalled batch moves it
little), so a slow phase moves it within a few batches whatever sizes they have. One
batch moves the level, and one pair the shape, by at most `MAX_STEP`; the fixed part
is at most `MAX_RATIO` texts' worth.
Two calibration runs at load (one text, then several) give the first shape; without
one, the cost is per text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Weight the past keeps at each new batch (or pair of batches for the shape).
DECAY = 0.7
# One batch moves the level, and one pair the shape, by at most this factor before the
# decay: a batch that stalled (the process descheduled, a pause) for a hundred times
# its cost would otherwise make the next few requests look a hundred times as slow and
# refuse them, though the stall is over; a machine that really is slower is followed
# within a few batches.
MAX_STEP = 4.0
# The shape's fixed part is at most this many texts' worth (short texts make it
# several; a stalled small batch beside a normal large one would make it hundreds).
MAX_RATIO = 64.0
# Two consecutive batches this many texts apart or more measure the shape.
MIN_SIZE_GAP = 4
# Texts in the larger calibration batch.
CALIBRATION_TEXTS = 8


class BatchCost:
    """The t(n) = a + b * n model of one version's batches."""

    def __init__(self) -> None:
        self._ratio: float | None = None  # a / b
        self._last: tuple[int, float] | None = None
        self.fixed_s = 0.0  # a
        self.per_text_s: float | None = None  # b; None until a batch was seen

    def observe(self, texts: int, seconds: float) -> None:
        """Fold in one batch of `texts` texts that ran `seconds`."""
        if texts < 1 or seconds <= 0:
            return
        if self._last is not None and abs(texts - self._last[0]) >= MIN_SIZE_GAP:
            b = (seconds - self._last[1]) / (texts - self._last[0])
            a = seconds - b * texts
            if b > 0 and a >= 0:
                if self._ratio is None:
                    self._ratio, self.per_text_s = min(a / b, MAX_RATIO), b
                else:
                    seen = min(a / b, max(self._ratio, 1.0) * MAX_STEP, MAX_RATIO)
                    self._ratio = DECAY * self._ratio + (1 - DECAY) * seen
        self._last = (texts, seconds)
        ratio = self._ratio or 0.0
        level = seconds / (ratio + texts)
        if self.per_text_s is not None:
            level = min(max(level, self.per_text_s / MAX_STEP), self.per_text_s * MAX_STEP)
        self.per_text_s = (
            level
            if self.per_text_s is None
            else math.exp(DECAY * math.log(self.per_text_s) + (1 - DECAY) * math.log(level))
        )
        self.fixed_s = ratio * self.per_text_s

    def seconds(self, texts: int, max_batch_texts: int) -> float | None:
        """Time to run `texts` texts in batches of at most `max_batch_texts`;
        None before any batch was measured."""
        if self.per_text_s is None:
            return None
        if texts <= 0:
            return 0.0
        batches = -(-texts // max(1, max_batch_texts))
        return batches * self.fixed_s + texts * self.per_text_s

    def calibrate(self, run: Callable[[int], object]) -> None:
        """Time `run(1)` and `run(CALIBRATION_TEXTS)` (a warmed-up runtime embedding
        that many texts) to give the model its first shape."""
        for texts in (1, CALIBRATION_TEXTS):
            started = time.perf_counter()
            run(texts)
            self.observe(texts, time.perf_counter() - started)
