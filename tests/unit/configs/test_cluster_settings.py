"""`cluster/settings.yaml`: what Kubernetes or KubeRay would refuse, or a tag that moves,
fails validation naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from configs.cluster import ClusterSettings, load_cluster_settings
from tests.conftest import REPO_ROOT

SETTINGS = REPO_ROOT / "cluster" / "settings.yaml"


def _shipped() -> dict[str, Any]:
    return load_cluster_settings(SETTINGS).model_dump()


def _refused(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        ClusterSettings.model_validate(doc)
    errors = caught.value.errors(include_input=False)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in errors]


@pytest.mark.parametrize("field", ["image", "gpu_image"])
@pytest.mark.parametrize(
    "image",
    [
        "repo/servekit:latest",
        "repo/servekit",
        "registry.example.com:5000/servekit",
        "registry.example.com:5000/servekit:latest",
    ],
)
def test_an_image_without_a_pinned_tag_is_refused(field: str, image: str) -> None:
    doc = {**_shipped(), field: image}
    ((where, message),) = _refused(doc)
    assert where == field
    assert "pinned tag" in message


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com:5000/servekit:0.1.0",
        "repo/servekit@sha256:" + "0" * 64,
        "repo/servekit:latest@sha256:" + "0" * 64,
    ],
)
def test_a_pinned_image_is_accepted(image: str) -> None:
    assert ClusterSettings.model_validate({**_shipped(), "image": image}).image == image


def test_min_replicas_above_max_replicas_is_refused() -> None:
    doc = _shipped()
    doc["worker_groups"][1].update(min_replicas=5, max_replicas=2)
    ((where, message),) = _refused(doc)
    assert where == "worker_groups.1"
    assert "min_replicas: above max_replicas" in message


def test_a_worker_group_name_listed_twice_is_refused() -> None:
    doc = _shipped()
    doc["worker_groups"][1]["name"] = doc["worker_groups"][0]["name"]
    ((where, message),) = _refused(doc)
    assert where == "worker_groups"
    assert "more than one group: cpu" in message


@pytest.mark.parametrize("name", ["GPU", "gpu_pool", "-gpu", "gpu-", "g" * 64, ""])
def test_names_that_are_not_dns_labels_are_refused(name: str) -> None:
    doc = _shipped()
    doc["worker_groups"][1]["name"] = name
    assert [where for where, _ in _refused(doc)] == ["worker_groups.1.name"]
    assert [where for where, _ in _refused({**_shipped(), "name": name})] == ["name"]
