"""`servekit index build`: a catalog snapshot artifact, built offline.

    servekit index build [--items FILE.jsonl] [--versions v1,v2] [--out FILE]

embeds a catalog (JSON lines, the shape `PUT /v1/catalogs/{catalog}/items` takes;
default: the example catalog, generated when missing) with versions of the search model
in the config, loaded as a replica loads them, builds one vector index per version, and
writes them with the items to one file. It prints the file's sha256 and the lines that
declare it under `args.search.snapshots` in serve_config.yaml. Vectors are cached as
`make eval` caches them, so either command embeds a catalog once per version.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ITEMS = Path("artifacts/catalog/products.jsonl")
DEFAULT_OUT = Path("artifacts/catalog/products.index")
DEFAULT_CACHE = Path("artifacts/eval-cache")


def add_commands(sub: Any, default_config: str) -> None:
    """Register `index build` on the command line's subparsers."""
    index = sub.add_parser("index", help="catalog snapshots: vector indexes built offline")
    verbs = index.add_subparsers(dest="index_verb", required=True)
    build = verbs.add_parser("build", help="embed a catalog and write its snapshot artifact")
    build.add_argument("--config", default=default_config, help="the serve config")
    build.add_argument(
        "--items", type=Path, default=None, help=f"catalog JSON lines (default: {DEFAULT_ITEMS})"
    )
    build.add_argument("--versions", default=None, help="comma-separated (default: all)")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT)
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    build.add_argument("--tenant", default="TENANT", help="tenant id for the printed lines")
    build.add_argument("--catalog", default="products", help="catalog for the printed lines")


def run(args: argparse.Namespace) -> int:
    """Build the snapshot; 0 on success."""
    from deployments.pipelines.offline import config_spaces, item_vectors
    from models.catalog_snapshot import write_snapshot
    from models.example_catalog import generate, read_items, write_items

    started = time.monotonic()
    config = Path(args.config)
    if not config.is_file():
        problem = "is a directory, not a config file" if config.is_dir() else "no such file"
        print(f"servekit: {config}: {problem}", file=sys.stderr)
        return 2
    if args.items is not None:
        try:
            items = read_items(args.items)
        except (OSError, ValueError) as e:
            print(f"servekit: {_unreadable(args.items, e)}", file=sys.stderr)
            return 2
    elif DEFAULT_ITEMS.is_file():
        items = read_items(DEFAULT_ITEMS)
    else:
        items = generate().items
        write_items(items, DEFAULT_ITEMS)
    versions = args.versions.split(",") if args.versions else None
    spaces, _, _ = config_spaces(config, versions)
    vectors = {}
    for space in spaces:
        matrix, cached = item_vectors(space, items, args.cache_dir, print)
        print(f"{space.name}: {len(items)} item vectors {'from the cache' if cached else 'made'}")
        vectors[space.name] = (space.cache_key or "", matrix)
    digest = write_snapshot(args.out, items, vectors)
    size_mb = args.out.stat().st_size / 1e6
    took = time.monotonic() - started
    print(f"{args.out}: {len(items)} items, {', '.join(vectors)}, {size_mb:.0f} MB, {took:.0f} s")
    print("declare it in serve_config.yaml, under the application's args:")
    print("  search:\n    snapshots:")
    print(f"      - tenant_id: {args.tenant}\n        catalog: {args.catalog}")
    print(f"        artifact:\n          uri: {args.out}\n          sha256: {digest}")
    return 0


def _unreadable(path: Path, error: Exception) -> str:
    """Why a catalog file cannot be read, naming it (a line that is not an item is
    named by `read_items` itself)."""
    from servekit.configedit import read_problem

    if isinstance(error, OSError | UnicodeDecodeError):
        return read_problem(path, error, "a JSON-lines file")
    return str(error)
