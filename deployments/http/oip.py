"""The Open Inference Protocol (KServe v2 REST), with the binary tensor data extension.

Text embedding models take one BYTES tensor of texts (shape `[n]` or `[n, 1]`) and
return one FP32 tensor `[n, dim]`. Tensor data may travel as JSON or, as Triton's and
KServe's HTTP clients do by default, as raw bytes after a JSON header whose length is
given by the `Inference-Header-Content-Length` header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import BadRequest, from_validation_error
from deployments.limits import check_count, refuse_too_many_strings

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "text"
OUTPUT_NAME = "embedding"


class RequestInput(BaseModel):
    """One input tensor of an inference request."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """One requested output tensor."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """`POST /v2/models/{name}[/versions/{v}]/infer` body."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    """Inference response (documented; built by `encode_infer`)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model's input or output."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """`GET /v2/models/{name}[/versions/{v}]` response."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """`GET /v2` response."""

    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class ParsedInfer:
    """What the ingress needs from an inference request."""

    texts: list[str]
    request_id: str | None
    binary_output: bool


def parse_infer(body: bytes, header_length: str | None, max_inputs: int) -> ParsedInfer:
    """Decode a JSON or binary-extension request into texts; 400 on anything wrong.
    The number of texts is bounded before the body is parsed, checked against the
    declared shape before any element is decoded."""
    json_part, binary = _split_body(body, header_length)
    refuse_too_many_strings(json_part, max_inputs, "inputs.0.data")
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise BadRequest("body: not valid JSON") from e
    try:
        request = InferenceRequest.model_validate(doc)
    except ValidationError as e:
        raise from_validation_error(e) from e
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        raise BadRequest(f"inputs: expected exactly one input named {INPUT_NAME!r}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise BadRequest("inputs.0.datatype: expected BYTES")
    if len(tensor.shape) == 2 and tensor.shape[1] != 1:
        raise BadRequest("inputs.0.shape: expected [n] or [n, 1]")
    count = tensor.shape[0]
    check_count(count, max_inputs, "inputs.0.data")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        texts = _decode_binary_bytes(binary, size, count)
    elif tensor.data is not None:
        texts = _decode_json_bytes(tensor.data, count)
    else:
        raise BadRequest("inputs.0.data: missing (and no binary_data_size)")
    for output in request.outputs or []:
        if output.name != OUTPUT_NAME:
            raise BadRequest(f"outputs: unknown output; this model has {OUTPUT_NAME!r}")
    return ParsedInfer(texts, request.id, _wants_binary(request))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError as e:
        raise BadRequest("Inference-Header-Content-Length: not an integer") from e
    if not 0 < length <= len(body):
        raise BadRequest("Inference-Header-Content-Length: outside the body")
    return body[:length], body[length:]


def _decode_json_bytes(data: list[Any], count: int) -> list[str]:
    if len(data) != count:
        raise BadRequest(f"inputs.0.data: {len(data)} elements for shape [{count}]")
    flat = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in data]
    if len(flat) != count:
        raise BadRequest(f"inputs.0.data: {len(flat)} elements for shape [{count}]")
    for i, text in enumerate(flat):
        if not isinstance(text, str):
            raise BadRequest(f"inputs.0.data.{i}: expected a string")
    return flat


def _decode_binary_bytes(binary: bytes, size: Any, count: int) -> list[str]:
    if not isinstance(size, int) or size != len(binary):
        raise BadRequest("inputs.0.parameters.binary_data_size: does not match the body")
    texts: list[str] = []
    offset = 0
    try:
        while offset < size and len(texts) <= count:
            (length,) = struct.unpack_from("<I", binary, offset)
            offset += 4
            if offset + length > size:
                raise BadRequest("inputs.0: binary element runs past the data")
            texts.append(binary[offset : offset + length].decode("utf-8"))
            offset += length
    except struct.error as e:
        raise BadRequest("inputs.0: truncated binary element length") from e
    except UnicodeDecodeError as e:
        raise BadRequest("inputs.0: binary element is not UTF-8") from e
    if len(texts) != count:
        raise BadRequest(f"inputs.0: {len(texts)} binary elements for shape [{count}]")
    return texts


def _wants_binary(request: InferenceRequest) -> bool:
    if (request.parameters or {}).get("binary_data_output") is True:
        return True
    return any((o.parameters or {}).get("binary_data") is True for o in request.outputs or [])


def encode_bytes_tensor(texts: list[str]) -> bytes:
    """BYTES tensor in the binary extension's layout: 4-byte LE length, then bytes."""
    parts = []
    for text in texts:
        raw = text.encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode_infer(
    model: str,
    version: str,
    request_id: str | None,
    vectors: npt.NDArray[np.float32],
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """Serialize the response as JSON, or as JSON header plus raw FP32 bytes."""
    output: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": "FP32",
        "shape": list(vectors.shape),
    }
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [output]}
    if request_id is not None:
        doc["id"] = request_id
    if not binary:
        output["data"] = vectors.reshape(-1)
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), {}
    raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(doc)
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}
