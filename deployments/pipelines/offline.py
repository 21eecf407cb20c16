"""Embedding a catalog offline, as `make eval` and `make index` do: the search model's
versions loaded from the config as a replica loads them (artifact checked against its
sha256), items embedded in chunks on every core, and the vectors cached by the model
artifact's sha256 and the hash of the embedded texts, so a catalog is embedded once
per version whichever of the two commands comes first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.catalog_snapshot import texts_hash
from stores.catalog import Item, item_text

F32 = npt.NDArray[np.float32]
EMBED_CHUNK = 512


@dataclass(frozen=True)
class Space:
    """An embedding space to evaluate: a version, how it embeds, its cache key."""

    name: str  # "minilm/v1"
    embed: Callable[[list[str]], F32]
    cache_key: str | None = None  # the artifact's sha256; None: never cached


def item_vectors(
    space: Space, items: Sequence[Item], cache_dir: Path | None, log: Callable[[str], None]
) -> tuple[F32, bool]:
    """Every item's embedding in `space`, rows in item order; whether the cache had them."""
    path = None
    if cache_dir is not None and space.cache_key is not None:
        path = cache_dir / f"{texts_hash(items)[:20]}-{space.cache_key[:20]}.npy"
        if path.is_file():
            vectors = np.load(path)
            if vectors.shape[0] == len(items):
                return vectors.astype(np.float32, copy=False), True
    texts = [item_text(item) for item in items]
    chunks, started = [], time.monotonic()
    for start in range(0, len(texts), EMBED_CHUNK):
        chunks.append(space.embed(texts[start : start + EMBED_CHUNK]))
        done = start + len(chunks[-1])
        if len(texts) > 10 * EMBED_CHUNK and (len(chunks) % 10 == 0 or done == len(texts)):
            rate = done / (time.monotonic() - started)
            log(f"  {space.name}: {done}/{len(texts)} items embedded ({rate:.0f}/s)")
    vectors = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        with partial.open("wb") as out:
            np.save(out, vectors)
        partial.replace(path)
    return vectors, False


def config_spaces(config: Path, versions: list[str] | None) -> tuple[list[Space], str, str]:
    """The search model's versions in the config, loaded as a replica loads them; the
    model's name and the configured fusion."""
    from configs.validate import validate_file
    from deployments.replicas.loading import load_version
    from models import ArtifactStore

    report = validate_file(config, check_artifacts=False)
    if not report.ok:
        raise SystemExit(f"{config}: " + "; ".join(report.problems))
    args = report.apps[0].args
    model = args.search_model()
    specs = args.models[model].versions
    chosen = versions or list(specs)
    if unknown := [v for v in chosen if v not in specs]:
        raise SystemExit(f"{model} has no version {unknown[0]!r} (it has {', '.join(specs)})")
    cache = Path(args.artifact_cache_dir) if args.artifact_cache_dir else None
    store = ArtifactStore(cache_dir=cache)
    spaces = []
    for version in chosen:
        # Bulk embedding uses every core: the thread count changes speed, not the model.
        spec = specs[version].model_copy(update={"intra_op_threads": 0})
        runtime = load_version(model, version, spec, args.artifact_root, store)
        spaces.append(Space(f"{model}/{version}", runtime.embed, spec.artifact.sha256))
    return spaces, model, args.search.fusion
