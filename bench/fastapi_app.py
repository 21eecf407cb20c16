"""A bare FastAPI app for the same model, for reference: no Ray, no batching, the same
encode function (servekit's ONNX runtime, v1), JSON out. What a hand-written service
would be, and what servekit's framework cost is measured against.

    python bench/fastapi_app.py --port 8011      (blocks; SIGTERM stops)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import uvicorn
from fastapi import FastAPI, Response

STORE = Path(__file__).resolve().parents[1] / "artifacts"


def build_app() -> FastAPI:
    """The app, with the model loaded."""
    from models import ArtifactRef, RuntimeOptions, load_model

    entry = json.loads((STORE / "manifest.json").read_text())["models"]["minilm"]["versions"]["v1"]
    model: Any = load_model(
        ArtifactRef(str(STORE / entry["file"]), entry["sha256"]), RuntimeOptions()
    )
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: dict[str, Any]) -> Response:  # runs in FastAPI's thread pool
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = model.embed(texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        payload = orjson.dumps({"object": "list", "data": data}, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(payload, media_type="application/json")

    return app


def main() -> int:
    """Serve until stopped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    uvicorn.run(
        build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
