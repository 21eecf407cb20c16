"""The one contract every version backend answers, so routing never asks which it is.

A backend runs one immutable model version: inline in the Ingress replica
(`InlineBackend`) or as a dedicated deployment reached through a handle
(`DedicatedBackend`). Both take a caller's deadline, raise only `ServekitError`s
(each carries its HTTP status), and answer `metadata` and `ready`.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

# One request's answer: vectors `[n, dim]` and the tokens the model read for each text
# (their sum is the request's usage; the embedding cache keeps each text's count).
# Set in a task that runs a shadow copy, which no caller waits for: its backend logs no
# traceback of its own when it fails (the shadower counts and summarises failures), and
# an inline version never runs it on the replica's event loop (the callers' requests
# need the loop; see `inline`).
SHADOW_COPY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "servekit_shadow_copy", default=False
)

EmbedResult = tuple[npt.NDArray[np.float32], list[int]]


@runtime_checkable
class VersionBackend(Protocol):
    """What the data plane needs from a model version, wherever it runs."""

    label: str  # "<model>/<version>", for errors and logs
    placement: str  # "inline" or "dedicated"

    async def embed(self, texts: list[str], deadline: float) -> EmbedResult:
        """Vectors for `texts`; work not started by `deadline` (`time.monotonic()`) is
        dropped, and the call then raises `Timeout`."""
        ...

    async def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts (`runtime_metadata`)."""
        ...

    async def ready(self) -> bool:
        """Whether the version can serve now (loaded, and not wedged)."""
        ...

    def spare(self) -> bool:
        """Whether work that nobody waits for (a shadow copy) may run now without
        delaying a request that someone does wait for."""
        ...


def remaining_s(deadline: float) -> float:
    """Seconds left until a `time.monotonic()` deadline (never below 0)."""
    return max(0.0, deadline - time.monotonic())


def split_batch(
    sizes: list[int], vectors: npt.NDArray[np.float32], tokens: list[int]
) -> list[EmbedResult]:
    """Cut a batch's outputs back into one (vectors, token counts) per request."""
    results: list[EmbedResult] = []
    offset = 0
    for size in sizes:
        end = offset + size
        results.append((vectors[offset:end], tokens[offset:end]))
        offset = end
    if offset != len(vectors):  # list in, list out
        raise RuntimeError(f"{len(vectors)} vectors for {offset} inputs")
    return results
