"""`/v1/embeddings` and `/v1/models` over real HTTP, with the official OpenAI client."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.conftest import tenant_api_key
from tests.integration.conftest import INLINE_MODEL, Service

pytestmark = pytest.mark.integration


def test_list_of_texts(service: Service) -> None:
    with service.client() as client:
        r = client.post("/v1/embeddings", json={"model": "minilm", "input": ["one", "two words"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert r.headers["x-model-version"] in ("v1", "v2")
    assert r.headers["x-request-id"]


def test_matching_dimensions_are_accepted(service: Service) -> None:
    with service.client() as client:
        r = client.post("/v1/embeddings", json={"model": "minilm", "input": "x", "dimensions": 384})
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == 384


def test_single_string_and_request_id_echo(service: Service) -> None:
    with service.client() as client:
        r = client.post(
            "/v1/embeddings",
            json={"model": "minilm", "input": "just one"},
            headers={"X-Request-ID": "caller-chosen-id-42"},
        )
    assert r.status_code == 200
    assert len(r.json()["data"]) == 1
    assert r.headers["x-request-id"] == "caller-chosen-id-42"


def test_base64_matches_float(service: Service) -> None:
    payload: dict[str, Any] = {"model": "minilm", "input": ["same text"]}
    with service.client(headers={"X-Model-Version": "v1"}) as client:
        floats = client.post("/v1/embeddings", json=payload).json()["data"][0]["embedding"]
        packed = client.post(
            "/v1/embeddings", json={**payload, "encoding_format": "base64"}
        ).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    assert np.allclose(decoded, np.asarray(floats, dtype=np.float32), atol=1e-7)


def test_official_openai_client(service: Service) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{service.base_url}/v1", api_key=tenant_api_key(), max_retries=0)
    result = client.embeddings.create(model="minilm", input=["hello", "world"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0
    # The client's default asks for base64 and decodes it itself.
    models = client.models.list()
    assert [m.id for m in models.data] == ["minilm", "recommender", INLINE_MODEL]


def test_models_lists_versions_and_weights(service: Service) -> None:
    with service.client() as client:
        body = client.get("/v1/models").json()
    card = body["data"][0]
    weights = {v["name"]: v["weight"] for v in card["versions"]}
    assert weights == {"v1": 90, "v2": 10, "v2-faulty": 0, "v2-slow": 0}
    deployments = {v["deployment"] for v in card["versions"]}
    assert {"minilm-v1", "minilm-v2"} <= deployments


def test_matches_sentence_transformers_through_http(service: Service, report: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    from models.build import source_dir

    texts = ["a", "Größenverhältnisse und Umlaute", "東京の天気は晴れです。", "word " * 400]
    reference = SentenceTransformer(str(source_dir()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    with service.client(headers={"X-Model-Version": "v1"}) as client:
        r = client.post("/v1/embeddings", json={"model": "minilm", "input": texts})
    assert r.headers["x-model-version"] == "v1"
    got = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    cos = (got * reference).sum(axis=1)
    report.append(f"HTTP parity minilm v1 vs sentence-transformers: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.9999
