"""Every bad request is a 4xx naming the problem, in one shape, never echoing input."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.integration.conftest import LIMITS, Service

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-payload-marker"


def _post(service: Service, path: str, **kwargs: Any) -> Any:
    with service.client() as client:
        return client.post(path, **kwargs)


@pytest.mark.parametrize(
    ("payload", "status", "code", "fragment"),
    [
        (b'{"model": "minilm", "input": [' + SECRET.encode(), 400, "invalid_request", "body: not valid JSON"),
        (b"[1, 2]", 400, "invalid_request", "body: expected a JSON object"),
        ({"model": "minilm", "input": 5, "tag": SECRET}, 400, "invalid_request", "unknown field"),
        ({"model": "minilm", "input": 5}, 400, "invalid_request", "input"),
        ({"model": "minilm", "input": ["ok", 7]}, 400, "invalid_request", "input.1: expected a string"),
        ({"model": "minilm"}, 400, "invalid_request", "input: field required"),
        ({"input": "x"}, 400, "invalid_request", "model: field required"),
        ({"model": "minilm", "input": []}, 400, "invalid_request", "input: empty list"),
        ({"model": "minilm", "input": ""}, 400, "invalid_request", "input: empty"),
        ({"model": "minilm", "input": ["a", ""]}, 400, "invalid_request", "input.1: empty string"),
        ({"model": "minilm", "input": "x", "encoding_format": SECRET}, 400, "invalid_request", "encoding_format"),
        ({"model": SECRET, "input": "x"}, 404, "not_found", "model: not served here"),
        ({"model": "minilm", "input": ["t"] * (LIMITS["max_inputs_per_request"] + 1)}, 400, "too_many_inputs", "at most 64"),
        ({"model": "minilm", "input": ["ok", SECRET * 200]}, 400, "input_too_long", "input.1: longer than 2000"),
        ({"model": "minilm", "input": "x", "dimensions": 12}, 400, "invalid_request", "dimensions: minilm returns 384 dimensions"),
    ],
)  # fmt: skip
def test_embeddings_bad_requests(
    service: Service, payload: Any, status: int, code: str, fragment: str
) -> None:
    kwargs = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    r = _post(service, "/v1/embeddings", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    assert error["request_id"] == r.headers["x-request-id"]
    assert SECRET not in r.text


def test_body_over_limit_is_413(service: Service) -> None:
    big = orjson.dumps({"model": "minilm", "input": ["x" * 1000] * 300})
    assert len(big) > LIMITS["max_body_bytes"]
    r = _post(service, "/v1/embeddings", content=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_unknown_version_pin_is_404(service: Service) -> None:
    r = _post(
        service,
        "/v1/embeddings",
        json={"model": "minilm", "input": "x"},
        headers={"X-Model-Version": "v9"},
    )
    assert r.status_code == 404
    assert "X-Model-Version" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404, "model: not served here"),
        ("/v2/models/minilm/versions/v9/infer", {"inputs": []}, 404, "version"),
        ("/v2/models/minilm/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/minilm/infer", {"inputs": [{"name": "wrong", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, 400, "exactly one input named 'text'"),
        ("/v2/models/minilm/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "datatype: expected BYTES"),
        ("/v2/models/minilm/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, 400, "1 elements for shape [2]"),
        ("/v2/models/minilm/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SECRET * 200]}]}, 400, "longer than 2000"),
        ("/v2/models/minilm/infer", {"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}, 400, "empty tensor"),
    ],
)  # fmt: skip
def test_infer_bad_requests(
    service: Service, path: str, body: Any, status: int, fragment: str
) -> None:
    r = _post(service, path, json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert isinstance(message, str)
    assert fragment in message
    assert SECRET not in r.text


def test_bad_binary_header_is_400(service: Service) -> None:
    r = _post(
        service,
        "/v2/models/minilm/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "999"},
    )
    assert r.status_code == 400
    assert "Inference-Header-Content-Length" in r.json()["error"]


def test_unknown_route_and_method(service: Service) -> None:
    with service.client() as client:
        missing = client.get("/v1/nothing-here")
        wrong_method = client.get("/v1/embeddings")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code in (400, 405)


def test_routing_key_over_256_characters_is_400(service: Service) -> None:
    body = {"model": "minilm", "input": "x"}
    r = _post(service, "/v1/embeddings", json=body, headers={"X-Routing-Key": "k" * 257})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("header.x-routing-key: ")
    ok = _post(service, "/v1/embeddings", json=body, headers={"X-Routing-Key": "k" * 256})
    assert ok.status_code == 200
