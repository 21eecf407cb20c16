"""The OpenAI embeddings API shape: request schema and response encoding."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import BadRequest, from_validation_error
from deployments.http.route_docs import example
from deployments.limits import check_count, refuse_too_many_strings


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings` body, as the OpenAI clients send it."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=example(
            {"model": "minilm", "input": ["red running shoes", "a waterproof jacket"]},
            {"model": "minilm", "input": "red running shoes", "encoding_format": "base64"},
        ),
    )

    model: str = Field(min_length=1, max_length=128, description="Served model name.")
    input: str | list[str] = Field(description="One text, or a list of texts.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Accepted only when equal to the model's dimension."
    )
    user: str | None = Field(None, max_length=256, description="Caller's end-user id.")

    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    """One vector of the response."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the model read."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """`POST /v1/embeddings` response (documented; built by `encode_response`)."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0213, -0.0491]}],
                "model": "minilm",
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        )
    )

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`, with servekit's versions and weights."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "servekit"
    versions: list[dict[str, Any]]


class ModelList(BaseModel):
    """`GET /v1/models` response."""

    model_config = ConfigDict(
        json_schema_extra=example(
            {
                "object": "list",
                "data": [
                    {
                        "id": "minilm",
                        "object": "model",
                        "created": 1767225600,
                        "owned_by": "servekit",
                        "versions": [
                            {"name": "v1", "weight": 90, "runtime": "onnx", "device": "cpu"},
                            {"name": "v2", "weight": 10, "runtime": "onnx", "device": "cpu"},
                        ],
                    }
                ],
            }
        )
    )

    object: Literal["list"] = "list"
    data: list[ModelCard]


def parse_request(body: bytes, max_inputs: int) -> EmbeddingRequest:
    """Decode and validate a request body; a clear 400 on anything wrong. The number
    of inputs is bounded before the body is parsed and checked before any item is."""
    refuse_too_many_strings(body, max_inputs, "input")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest("body: not valid JSON") from e
    if not isinstance(doc, dict):
        raise BadRequest("body: expected a JSON object")
    unknown = sorted(set(doc) - set(EmbeddingRequest.model_fields))
    if unknown:
        raise BadRequest(f"{unknown[0][:64]}: unknown field")
    raw = doc.get("input")
    # `null` included: the validation library would name a member of the union
    # (`input.str`), a field the caller never sent.
    if "input" in doc and not isinstance(raw, str | list):
        raise BadRequest("input: expected a string or a list of strings")
    if isinstance(raw, list):
        check_count(len(raw), max_inputs, "input")
        if not all(type(x) is str for x in raw):
            bad = next(i for i, x in enumerate(raw) if not isinstance(x, str))
            raise BadRequest(f"input.{bad}: expected a string (token arrays are not accepted)")
    try:
        request = EmbeddingRequest.model_validate(doc)
    except ValidationError as e:
        raise from_validation_error(e) from e
    texts = request.texts()
    if not texts:
        raise BadRequest("input: empty list")
    if not all(texts):
        i = texts.index("")
        raise BadRequest(f"input.{i}: empty string" if len(texts) > 1 else "input: empty")
    return request


def encode_response(
    model: str,
    vectors: npt.NDArray[np.float32],
    prompt_tokens: int,
    encoding_format: str,
) -> bytes:
    """Serialize the response; numpy rows go to JSON without Python float lists."""
    if encoding_format == "base64":
        rows: list[Any] = [
            base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
            for row in vectors
        ]
    else:
        rows = list(vectors)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
