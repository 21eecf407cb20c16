"""The minimal Ray Serve app a user would write for this model: one deployment,
`@serve.batch`, the same encode function (servekit's ONNX runtime), JSON out.

    python bench/plain_serve.py --port 8010      (blocks; Ctrl-C / SIGTERM stops)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

STORE = Path(__file__).resolve().parents[1] / "artifacts"


class Embedder:
    """One replica: the v1 ONNX model behind `@serve.batch`."""

    def __init__(self) -> None:
        from models import ArtifactRef, RuntimeOptions, load_model

        entry = json.loads((STORE / "manifest.json").read_text())["models"]["minilm"]["versions"][
            "v1"
        ]
        self.model = load_model(
            ArtifactRef(str(STORE / entry["file"]), entry["sha256"]), RuntimeOptions()
        )

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def embed(self, batches: list[list[str]]) -> list[Any]:
        flat = [t for texts in batches for t in texts]
        vectors = self.model.embed(flat)  # type: ignore[attr-defined]
        out, i = [], 0
        for texts in batches:
            out.append(vectors[i : i + len(texts)].tolist())
            i += len(texts)
        return out

    async def __call__(self, request: Request) -> Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = await self.embed(texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return Response(json.dumps({"object": "list", "data": data}), media_type="application/json")


def main() -> int:
    """Serve until stopped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = serve.deployment(max_ongoing_requests=256)(Embedder).bind()
    serve.run(app, route_prefix="/v1/embeddings", name="plain")
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
