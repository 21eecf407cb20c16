"""The traffic split through HTTP, and version pinning."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.conftest import auth_headers
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


def test_split_follows_weights(service: Service, report: list[str]) -> None:
    n = 300

    async def run() -> Counter[str]:
        async with httpx.AsyncClient(
            base_url=service.base_url, timeout=60, headers=auth_headers()
        ) as client:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> str:
                async with sem:
                    r = await client.post(
                        "/v1/embeddings", json={"model": "minilm", "input": f"t{i}"}
                    )
                    assert r.status_code == 200
                    return r.headers["x-model-version"]

            return Counter(await asyncio.gather(*(one(i) for i in range(n))))

    seen = asyncio.run(run())
    report.append(f"HTTP split over {n} requests at 90/10: {dict(seen)}")
    assert set(seen) == {"v1", "v2"}
    # Binomial(300, 0.1): mean 30, sd 5.2; 4.5 sd either side.
    assert 7 <= seen["v2"] <= 53


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pinning_by_header_and_path(service: Service, version: str) -> None:
    with service.client() as client:
        for _ in range(5):
            r = client.post(
                "/v1/embeddings",
                json={"model": "minilm", "input": "pinned"},
                headers={"X-Model-Version": version},
            )
            assert r.headers["x-model-version"] == version
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["p"]}]}
        r = client.post(f"/v2/models/minilm/versions/{version}/infer", json=body)
        assert r.headers["x-model-version"] == version
        assert r.json()["model_version"] == version


def test_docs_and_openapi_cover_every_route(service: Service) -> None:
    with service.client() as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200
    paths = set(spec["paths"])
    assert {
        "/v1/embeddings",
        "/v1/models",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    } <= paths
    schemas = spec["components"]["schemas"]
    assert {"EmbeddingRequest", "EmbeddingResponse", "InferenceRequest", "ErrorBody"} <= set(
        schemas
    )
    body = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/EmbeddingRequest"
    assert all(
        "self" not in str(op.get("parameters", ""))
        for p in spec["paths"].values()
        for op in p.values()
    )
