"""The inference protocol's readiness routes (`/v2/models/{name}/ready` and
`/v2/models/{name}/versions/{version}/ready`): a model's answer is its versions with
traffic, a version's its own replica, whatever its traffic; a model or version not
served here is a 404, as on the protocol's other routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from configs.schema import AppArgs, IngressLiveConfig
from deployments.dataplane import CallRecord, DataPlane
from deployments.errors import NotFound
from deployments.http import inference
from deployments.routing.router import VersionRouter
from servekit.contract import DOCUMENT
from tests.conftest import REPO_ROOT
from tests.unit.deployments.fakes import QuietRouterMetrics


class _Version:
    """A version whose readiness the test sets."""

    placement = "inline"

    def __init__(self, label: str, ready: bool) -> None:
        self.label = label
        self.is_ready = ready

    async def embed(self, texts: list[str], deadline: float) -> tuple[npt.NDArray[Any], list[int]]:
        return np.zeros((len(texts), 4), dtype=np.float32), [1] * len(texts)

    async def metadata(self) -> dict[str, Any]:
        return {"embedding_dim": 4}

    async def ready(self) -> bool:
        return self.is_ready

    def spare(self) -> bool:
        return True


def _plane(v1: bool, v2: bool) -> DataPlane:
    doc = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    raw = doc["applications"][0]["args"]
    raw["models"].pop("recommender")
    args = AppArgs.model_validate(raw)
    backends: dict[tuple[str, str], Any] = {
        ("minilm", "v1"): _Version("minilm/v1", v1),
        ("minilm", "v2"): _Version("minilm/v2", v2),
    }
    plane = DataPlane(args, VersionRouter(args, backends, QuietRouterMetrics()))
    live = {"traffic": {"minilm": {"v1": 100, "v2": 0}}}
    asyncio.run(plane.configure(IngressLiveConfig.model_validate(live)))
    return plane


def _ready(plane: DataPlane, name: str, version: str | None) -> tuple[int, Any, CallRecord]:
    call = CallRecord()
    response = asyncio.run(inference.ready(plane, call, name, version))
    return response.status_code, json.loads(bytes(response.body)), call


def test_a_version_answers_for_itself_whatever_its_traffic() -> None:
    plane = _plane(v1=True, v2=False)
    assert _ready(plane, "minilm", None)[:2] == (200, {"name": "minilm", "ready": True})
    assert _ready(plane, "minilm", "v1")[:2] == (200, {"name": "minilm", "ready": True})
    status, body, call = _ready(plane, "minilm", "v2")  # no traffic, no ready replica
    assert (status, body) == (503, {"name": "minilm", "ready": False})
    assert (call.model, call.version) == ("minilm", "v2")
    plane = _plane(v1=False, v2=True)
    assert _ready(plane, "minilm", None)[0] == 503
    assert _ready(plane, "minilm", "v1")[0] == 503
    assert _ready(plane, "minilm", "v2")[0] == 200


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("nope", None, "model: not served here"),
        ("nope", "v1", "model: not served here"),
        ("minilm", "v9", "version: minilm has no such version"),
    ],
)
def test_a_model_or_version_not_served_is_a_404(
    name: str, version: str | None, message: str
) -> None:
    with pytest.raises(NotFound) as info:
        _ready(_plane(v1=True, v2=True), name, version)
    assert info.value.message == message


def test_the_route_is_in_the_api_document() -> None:
    paths = json.loads(DOCUMENT.read_text())["paths"]
    route = paths["/v2/models/{name}/versions/{version}/ready"]["get"]
    assert route["summary"] == "Model version readiness"
    assert {"404", "503"} <= set(route["responses"])
