"""Request parsing and response encoding of the OpenAI and inference-protocol routes."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from deployments.errors import BadRequest, InputTooLong
from deployments.http.oip import encode_bytes_tensor, encode_infer, parse_infer
from deployments.http.openai import encode_response, parse_request
from deployments.limits import check_lengths

SECRET = "value-that-must-not-come-back"


def test_openai_request_forms() -> None:
    assert parse_request(b'{"model": "m", "input": "x"}', 2048).texts() == ["x"]
    assert parse_request(b'{"model": "m", "input": ["a", "b"], "user": "u1"}', 2048).texts() == [
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body: not valid JSON"),
        (b'"just a string"', "body: expected a JSON object"),
        (b'{"model": "m", "input": [1, 2]}', "input.0: expected a string"),
        (b'{"model": "m", "input": {"a": 1}}', "input: expected a string or a list"),
        (b'{"model": "m", "input": null}', "input: expected a string or a list of strings"),
        (b'{"model": "m", "input": 3}', "input: expected a string or a list of strings"),
        (b'{"model": "m"}', "input: field required"),
        (b'{"model": "m", "input": "x", "extra": "' + SECRET.encode() + b'"}', "extra: unknown"),
        (b'{"model": "m", "input": "x", "encoding_format": "' + SECRET.encode() + b'"}', "encoding_format"),
        (b'{"model": "", "input": "x"}', "model"),
    ],
)  # fmt: skip
def test_openai_request_errors_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(body, 2048)
    assert message in info.value.message
    assert SECRET not in info.value.message


@pytest.mark.parametrize(
    ("texts", "field", "named"),
    [
        (["x" * 6], "input", "input"),  # one text (`"input": "..."`, a search's query)
        (["x" * 6], "query", "query"),
        (["ok", "x" * 6], "input", "input.1"),
        (["ok", "x" * 6], "inputs.0.data", "inputs.0.data.1"),
    ],
)
def test_a_text_over_the_limit_is_named(texts: list[str], field: str, named: str) -> None:
    with pytest.raises(InputTooLong) as info:
        check_lengths(texts, 5, field)
    assert info.value.message == f"{named}: longer than 5 characters"


def test_openai_response_float_and_base64() -> None:
    vectors = (np.arange(6, dtype=np.float32).reshape(2, 3) / 10).astype(np.float32)
    doc = orjson.loads(encode_response("m", vectors, 7, "float"))
    assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert doc["data"][1]["embedding"] == pytest.approx([0.3, 0.4, 0.5])
    b64 = orjson.loads(encode_response("m", vectors, 7, "base64"))["data"][1]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(b64), dtype="<f4"), vectors[1])


def _binary_request(texts: list[str]) -> tuple[bytes, str]:
    raw = encode_bytes_tensor(texts)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, str(len(header))


def test_oip_binary_roundtrip() -> None:
    body, length = _binary_request(["héllo", "", "wörld"])
    parsed = parse_infer(body, length, 2048)
    assert parsed.texts == ["héllo", "", "wörld"]
    assert parsed.binary_output
    vectors = np.ones((3, 4), dtype=np.float32)
    content, headers = encode_infer("m", "v1", "id-1", vectors, binary=True)
    n = int(headers["Inference-Header-Content-Length"])
    meta = orjson.loads(content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 48
    assert np.array_equal(np.frombuffer(content[n:], dtype="<f4").reshape(3, 4), vectors)


def test_oip_json_nested_shape() -> None:
    doc = {
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]
    }
    parsed = parse_infer(orjson.dumps(doc), None, 2048)
    assert parsed.texts == ["a", "b"]
    assert not parsed.binary_output


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-3], "binary_data_size: does not match"),
        (lambda b: b + b"\x09\x00\x00\x00ab", "binary_data_size: does not match"),
    ],
)
def test_oip_binary_errors(mutate: object, message: str) -> None:
    body, length = _binary_request(["abc", "de"])
    with pytest.raises(BadRequest, match=message):
        parse_infer(mutate(body), length, 2048)  # type: ignore[operator]


def test_oip_header_length_errors() -> None:
    with pytest.raises(BadRequest, match="not an integer"):
        parse_infer(b"{}", "abc", 2048)
    with pytest.raises(BadRequest, match="outside the body"):
        parse_infer(b"{}", "50", 2048)
