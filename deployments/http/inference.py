"""The Open Inference Protocol's routes as the ingress serves them: parse and encode
around the data plane (`deployments/http/oip.py` has the wire format); and the model
cards of `/v1/models`."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from configs.schema import AppArgs, Limits
from deployments.dataplane import CallRecord, DataPlane
from deployments.errors import BadRequest, NotFound
from deployments.http import oip
from deployments.http.embeddings import ROUTING_KEY_MAX_CHARS
from deployments.http.envelope import read_body
from deployments.http.openai import ModelList
from deployments.http.route_docs import responses
from deployments.routing.router import VersionRouter

_RECENT = {"requests": 412, "rate_per_s": 6.867, "error_rate": 0.0, "p95_latency_ms": 18.4}
CARD_EXAMPLE: dict[str, Any] = {
    "id": "minilm",
    "object": "model",
    "created": 1767225600,
    "owned_by": "servekit",
    "versions": [
        {"name": "v1", "weight": 90, "runtime": "onnx", "device": "cpu",
         "configured_weight": 90, "deployment": "Ingress (inline)",
         "sha256": "9f2c" + "0" * 60, "recent": _RECENT},
        {"name": "v2", "weight": 10, "runtime": "onnx", "device": "cpu",
         "configured_weight": 10, "deployment": "minilm-v2",
         "sha256": "41ab" + "0" * 60, "recent": {**_RECENT, "requests": 45}},
    ],
    "rollout": {"canary": "v2", "state": "watching", "reason": None, "decided_at": None,
                "policy": {"canary": "v2", "max_error_rate": 0.05, "max_p95_latency_ms": 1000.0,
                           "window_s": 60.0, "min_requests": 20},
                "window": {**_RECENT, "requests": 45}},
    "shadow": None,
}  # fmt: skip
# The route decorators' documentation of `/v1/models` and `/v1/models/{name}`.
LIST_DOC: dict[str, Any] = {
    "summary": "List served models",
    "response_model": ModelList,
    "responses": responses(),
}
CARD_DOC: dict[str, Any] = {
    "summary": "One model, with rollout state and recent figures",
    "responses": responses(404, example=CARD_EXAMPLE),
}


async def infer(
    plane: DataPlane,
    limits: Limits,
    call: CallRecord,
    request: Request,
    name: str,
    pinned: str | None,
    source: str,
) -> Response:
    """Embed a BYTES tensor of texts; JSON or binary tensor data both ways."""
    plane.check_target(name, pinned, source, call)
    call.model = name
    raw = await read_body(
        request.headers.get("content-length", ""), request.stream(), limits.max_body_bytes
    )
    parsed = oip.parse_infer(
        raw, request.headers.get(oip.HEADER_LENGTH), limits.max_inputs_per_request
    )
    if not parsed.texts:
        raise BadRequest("inputs.0: empty tensor")
    key = request.headers.get("x-routing-key")
    key = key[:ROUTING_KEY_MAX_CHARS] if key else None
    out = await plane.embed(call, name, parsed.texts, pinned, source, key, "inputs.0.data")
    content, headers = oip.encode_infer(
        name, out.version, parsed.request_id, out.vectors, parsed.binary_output
    )
    media = "application/octet-stream" if parsed.binary_output else "application/json"
    return Response(content, media_type=media, headers=headers)


async def metadata(plane: DataPlane, call: CallRecord, name: str, version: str | None) -> Response:
    """Versions, platform and tensor signature of a model, or of one version."""
    plane.authorize(call, name, None)
    plane.check_model(name, version)
    call.model = name
    target = version or plane.primary(name)
    call.version = target
    meta = await plane.metadata(name, target)
    body: dict[str, Any] = {
        "name": name,
        "versions": [version] if version else list(plane.args.models[name].versions),
        "platform": "onnxruntime_onnx" if meta["runtime"] == "onnx" else "pytorch_torchscript",
        "inputs": meta["inputs"],
        "outputs": meta["outputs"],
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def ready(plane: DataPlane, call: CallRecord, name: str, version: str | None) -> Response:
    """200 when every version of the model with traffic (or the one version named) has
    a ready replica, else 503; 404 for a model or version not served here."""
    plane.check_model(name, version)
    call.model = name
    if version is None:
        ok = await plane.ready([name])
    else:
        call.version = version
        ok = await plane.version_ready(name, version)
    return json_response({"name": name, "ready": ok}, 200 if ok else 503)


def json_response(doc: Any, status: int = 200) -> Response:
    """A JSON response from a plain document."""
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


async def model_list(
    router: VersionRouter, args: AppArgs, call: CallRecord, created: int
) -> Response:
    """`/v1/models`: the models the caller's key may use; internals for admins only."""
    who = call.principal
    internal = who is None or who.admin
    names = [n for n in args.models if who is None or who.may_use(n)]
    data = [router.card(n, created, False, internal) for n in names]
    return json_response({"object": "list", "data": data})


async def model_card(
    router: VersionRouter, args: AppArgs, call: CallRecord, created: int, name: str
) -> Response:
    """`/v1/models/{name}`: one model with rollout state; internals for admins only."""
    if name not in args.models:
        raise NotFound("model: not served here")
    call.model = name
    internal = call.principal is None or call.principal.admin
    return json_response(router.card(name, created, True, internal))
