"""The Open Inference Protocol routes, with JSON tensors, binary tensors and Triton's client."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from deployments.http.oip import encode_bytes_tensor
from tests.conftest import auth_headers
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

TEXTS = ["first text", "второй текст", "third"]


def _json_request(texts: list[str]) -> dict[str, object]:
    return {
        "id": "req-1",
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
    }


def test_health_and_metadata(service: Service) -> None:
    with service.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/minilm/ready").json() == {"name": "minilm", "ready": True}
        meta = client.get("/v2/models/minilm").json()
        version = client.get("/v2/models/minilm/versions/v2").json()
        server = client.get("/v2").json()
    assert meta["name"] == "minilm"
    assert meta["versions"][:2] == ["v1", "v2"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert meta["platform"] == "onnxruntime_onnx"
    assert version["versions"] == ["v2"]
    assert "binary_tensor_data" in server["extensions"]


def test_json_infer(service: Service) -> None:
    with service.client() as client:
        r = client.post("/v2/models/minilm/infer", json=_json_request(TEXTS))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1"
    assert body["model_name"] == "minilm"
    assert body["model_version"] == r.headers["x-model-version"]
    (out,) = body["outputs"]
    assert out["name"] == "embedding"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [3, 384]
    assert len(out["data"]) == 3 * 384


def test_binary_infer_matches_json(service: Service) -> None:
    raw = encode_bytes_tensor(TEXTS)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(TEXTS), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
        }
    )
    with service.client() as client:
        r = client.post(
            "/v2/models/minilm/versions/v1/infer",
            content=header + raw,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        )
        as_json = client.post("/v2/models/minilm/versions/v1/infer", json=_json_request(TEXTS))
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:length])
    (out,) = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 3 * 384 * 4
    vectors = np.frombuffer(r.content[length:], dtype="<f4").reshape(out["shape"])
    expected = np.asarray(as_json.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 384)
    assert np.allclose(vectors, expected, atol=1e-6)


def test_triton_http_client_unchanged(service: Service) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=service.base_url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    # The key travels as the client's per-call headers.
    auth = auth_headers()
    assert client.is_model_ready("minilm", headers=dict(auth))
    texts = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    tensor = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=True)
    result = client.infer(
        "minilm",
        inputs=[tensor],
        model_version="v2",
        outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)],
        headers=dict(auth),  # the client adds its own headers to the dict it gets
    )
    vectors = result.as_numpy("embedding")
    assert vectors is not None
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # Default request shape of the client: JSON input data, outputs unspecified.
    plain = httpclient.InferInput("text", [1], "BYTES")
    plain.set_data_from_numpy(np.array([b"json path"], dtype=np.object_), binary_data=False)
    again = client.infer("minilm", inputs=[plain], headers=dict(auth))
    vectors2 = again.as_numpy("embedding")
    assert vectors2 is not None
    assert vectors2.shape == (1, 384)
    client.close()


def test_bytes_tensor_codec_roundtrip() -> None:
    raw = encode_bytes_tensor(["a", "ñ", ""])
    assert raw[:4] == struct.pack("<I", 1)
    assert len(raw) == 4 + 1 + 4 + 2 + 4
