"""A model placed inline: its versions run inside the ingress replica, no extra hop."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import numpy as np
import pytest

from tests.conftest import auth_headers
from tests.integration.conftest import APP, INLINE_MODEL, Service

pytestmark = pytest.mark.integration


def test_inline_model_serves_split_and_pinned(service: Service) -> None:
    texts = ["inline placement", "Größenverhältnisse", "東京"]
    with service.client() as client:
        seen = Counter(
            client.post("/v1/embeddings", json={"model": INLINE_MODEL, "input": "x"}).headers[
                "x-model-version"
            ]
            for _ in range(40)
        )
        inline = client.post(
            "/v1/embeddings",
            json={"model": INLINE_MODEL, "input": texts},
            headers={"X-Model-Version": "v1"},
        )
        dedicated = client.post(
            "/v1/embeddings",
            json={"model": "minilm", "input": texts},
            headers={"X-Model-Version": "v1"},
        )
        meta = client.get(f"/v2/models/{INLINE_MODEL}").json()
        ready = client.get(f"/v2/models/{INLINE_MODEL}/ready")
        detail = client.get(f"/v1/models/{INLINE_MODEL}").json()
    assert set(seen) == {"v1", "v2"}
    assert inline.status_code == 200
    assert inline.headers["x-model-version"] == "v1"
    a = np.asarray([d["embedding"] for d in inline.json()["data"]])
    b = np.asarray([d["embedding"] for d in dedicated.json()["data"]])
    assert np.allclose(a, b, atol=1e-5)
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert ready.status_code == 200
    assert {v["deployment"] for v in detail["versions"]} == {"Ingress (inline)"}
    assert detail["versions"][0]["recent"]["requests"] > 0


def test_inline_versions_have_no_deployment(service: Service) -> None:
    from ray import serve

    deployments = set(serve.status().applications[APP].deployments)
    assert not any(name.startswith(f"{INLINE_MODEL}-") for name in deployments)


def test_inline_batches_concurrent_requests(service: Service) -> None:
    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=service.base_url, timeout=60, headers=auth_headers()
        ) as client:
            rs = await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"model": INLINE_MODEL, "input": f"c{i}"})
                    for i in range(48)
                )
            )
            return [r.status_code for r in rs]

    assert asyncio.run(run()) == [200] * 48
