"""The KubeRay RayService manifest: current, schema-valid, and what production needs."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs.cluster import ClusterSettings, load_cluster_settings
from configs.settings import LOCAL_SERVE_ENV, SERVE_ENV
from servekit import kube
from tests.conftest import REPO_ROOT
from tests.unit.cluster.test_manifest_schemas import _strict

# KubeRay's published CRD sits beside the project (../shared); another location may be
# given with KUBERAY_RAYSERVICE_CRD.
CRD = Path(
    os.environ.get(
        "KUBERAY_RAYSERVICE_CRD",
        REPO_ROOT.parent / "shared" / "schemas" / "kuberay" / "ray.io_rayservices.yaml",
    )
)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(kube.MANIFEST.read_text())
    return doc


def _pods(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [(name, g, g["template"]) for name, g in groups]


def test_manifest_is_current() -> None:
    assert kube.MANIFEST.read_text() == kube.render(), "stale: run `make cluster`"


def test_manifest_matches_kuberay_crd_schema(manifest: dict[str, Any]) -> None:
    import jsonschema

    if not CRD.is_file():
        pytest.skip(f"KubeRay CRD schema not present at {CRD}")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    # Strict field validation, as `kubectl apply --validate=strict` does: a field the
    # schema does not know is an error, not silently pruned.
    schema = _strict(version["schema"]["openAPIV3Schema"])
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: list(e.path)
    )
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []
    assert manifest["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert manifest["kind"] == crd["spec"]["names"]["kind"]


def test_strict_schema_catches_unknown_fields(manifest: dict[str, Any]) -> None:
    import copy

    import jsonschema

    if not CRD.is_file():
        pytest.skip(f"KubeRay CRD schema not present at {CRD}")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = _strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParms"] = {}
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("rayStartParms" in m for m in messages)


def test_embedded_serve_config_is_valid_for_serve_and_servekit(manifest: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    from servekit.local import check_document

    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert check_document(embedded, check_artifacts=False) == []
    app = embedded["applications"][0]
    assert app["args"]["artifact_root"].startswith("s3://")
    assert embedded["http_options"]["host"] == "0.0.0.0"
    # Everything else is serve_config.yaml itself.
    local = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    del app["args"]["artifact_root"]
    embedded["http_options"]["host"] = local["http_options"]["host"]
    assert embedded == local


def test_cluster_shape(manifest: dict[str, Any]) -> None:
    spec = manifest["spec"]
    cluster = spec["rayClusterConfig"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for name, group, template in _pods(manifest):
        pod = template["spec"]
        (container,) = pod["containers"]
        # The head's account carries the Role KubeRay binds for Ray's autoscaler
        # (patch pods and RayClusters); the workers' has none.
        account = "servekit-ray" if name == "head" else "servekit-ray-worker"
        assert pod["serviceAccountName"] == account, name
        assert re.search(r":[0-9][\w.-]*$", container["image"]), f"{name}: image tag not pinned"
        assert container["resources"]["requests"] == container["resources"]["limits"], name
        assert {"name": "metrics", "containerPort": 8080} in container["ports"], name
        # Every Ray process on every pod runs with servekit's Serve settings (HAProxy).
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, name
        # ...and Ray's drain for the load balancers in front of a cluster, not the local one.
        assert not set(LOCAL_SERVE_ENV) & set(env), name
        if name != "head":
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    gpu = next(g for n, g, _ in _pods(manifest) if n == "gpu")
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    assert gpu["rayStartParams"]["num-gpus"] == "1"


def test_every_container_resolves_artifacts_where_the_embedded_config_does(
    manifest: dict[str, Any],
) -> None:
    # A config submitted to the dashboard without `artifact_root` (serve deploy of
    # serve_config.yaml itself) must not resolve relative uris inside the image.
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (root,) = {app["args"]["artifact_root"] for app in embedded["applications"]}
    assert root == load_cluster_settings(kube.SETTINGS).artifact_root
    for name, _, template in _pods(manifest):
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SERVEKIT_ARTIFACT_ROOT"] == root, name


def test_a_config_without_artifact_root_resolves_under_the_pods_prefix(
    manifest: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from configs.settings import resolve_artifact_uri

    (container,) = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    monkeypatch.setenv("SERVEKIT_ARTIFACT_ROOT", env["SERVEKIT_ARTIFACT_ROOT"])
    local = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    (app,) = (a for a in local["applications"] if "models" in a.get("args", {}))
    assert "artifact_root" not in app["args"]
    for model in app["args"]["models"].values():
        for version in model["versions"].values():
            uri = resolve_artifact_uri(version["artifact"]["uri"], None)
            assert uri.startswith(env["SERVEKIT_ARTIFACT_ROOT"].rstrip("/") + "/"), uri


def test_every_container_knows_the_secret_and_redis(manifest: dict[str, Any]) -> None:
    settings = load_cluster_settings(kube.SETTINGS)
    for name, _, template in _pods(manifest):
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["SERVEKIT_AWS_SECRET_ID"]["value"] == settings.stores.aws_secret_id, name
        assert env["SERVEKIT_REDIS_URL"]["value"] == settings.stores.redis_url, name
        assert env["AWS_REGION"]["value"] == settings.aws_region, name
        # Production rules: auth on, no development secret, a registry DSN.
        assert env["SERVEKIT_ENV"]["value"] == "production", name
        # The secrets themselves come from Secrets Manager with the pod's role: none is
        # in the manifest, nor a Kubernetes Secret reference to fill by hand. The
        # registry DSN, password included, is one of them.
        assert all(set(e) == {"name", "value"} for e in env.values()), name
        assert not {n for n in env if re.search(r"PASSWORD|HMAC|ADMIN|DSN", n)}, name
        assert "@" not in env["SERVEKIT_REDIS_URL"]["value"], name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"redis_url": "redis://redis.internal:6379/0"}, "expected rediss://"),
        ({"redis_url": "rediss://:hunter2@redis.internal:6379/0"}, "holds credentials"),
        ({"redis_url": "redis.internal:6379"}, "expected rediss://"),
        ({"aws_secret_id": ""}, "at least 1 character"),
        ({"password": "hunter2"}, "Extra inputs are not permitted"),
    ],
)
def test_settings_refuse_bad_store_fields(change: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    doc = load_cluster_settings(kube.SETTINGS).model_dump()
    doc["stores"].update(change)
    with pytest.raises(ValidationError, match=message) as caught:
        ClusterSettings.model_validate(doc)
    assert "hunter2" not in str(caught.value)


def test_every_container_sends_traces_where_the_settings_say(tmp_path: Path) -> None:
    doc = load_cluster_settings(kube.SETTINGS).model_dump()
    doc["tracing"] = {"otlp_endpoint": "http://otel-collector.monitoring:4318", "sample_ratio": 0.2}
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(doc))
    manifest = yaml.safe_load(kube.render(settings_path=settings))
    for name, _, template in _pods(manifest):
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318", name
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.2", name
        assert env["OTEL_SERVICE_NAME"] == doc["name"], name
    # The shipped settings export nothing and sample the default share.
    shipped = yaml.safe_load(kube.MANIFEST.read_text())
    for name, _, template in _pods(shipped):
        env = {e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"]}
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env, name
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.01", name


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ({"otlp_endpoint": "otel:4318"}, "expected an http:// or https:// URL"),
        ({"otlp_endpoint": "https://user:hunter2@otel:4318"}, "holds credentials"),
        ({"sample_ratio": 1.5}, "less than or equal to 1"),
    ],
)
def test_settings_refuse_bad_tracing_fields(tracing: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    doc = load_cluster_settings(kube.SETTINGS).model_dump()
    doc["tracing"] = tracing
    with pytest.raises(ValidationError, match=message) as caught:
        ClusterSettings.model_validate(doc)
    assert "hunter2" not in str(caught.value)


def test_settings_refuse_workers_on_the_heads_service_account() -> None:
    from pydantic import ValidationError

    doc = load_cluster_settings(kube.SETTINGS).model_dump()
    doc["worker_service_account"] = doc["service_account"]
    with pytest.raises(ValidationError, match="worker_service_account: the head's"):
        ClusterSettings.model_validate(doc)


def test_podmonitor_selects_the_ray_pods(manifest: dict[str, Any]) -> None:
    monitor = yaml.safe_load((REPO_ROOT / "cluster" / "monitoring" / "podmonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [manifest["metadata"]["namespace"]]
    for name, _, template in _pods(manifest):
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_dockerfile_matches_pyproject() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in project["project"]["dependencies"] if d.startswith("ray["))
    torch_pin = next(d for d in project["project"]["dependencies"] if d.startswith("torch"))
    ray_version = ray_pin.split("==")[1]
    image = re.search(r"ARG RAY_IMAGE=rayproject/ray:(\S+)", dockerfile)
    assert image is not None
    assert image.group(1) == f"{ray_version}-py311-cpu"
    assert project["project"]["requires-python"].startswith(">=3.11")
    assert f'"{torch_pin}"' in dockerfile
    for package in project["tool"]["setuptools"]["packages"]:
        top = package.split(".")[0]  # sub-packages travel with their top-level folder
        assert f"COPY --chown=ray:users {top} ./{top}" in dockerfile
    settings = yaml.safe_load((REPO_ROOT / "cluster" / "settings.yaml").read_text())
    assert settings["ray_version"] == ray_version


def test_dashboard_panels_query_servekit_metrics() -> None:
    import json

    from deployments.observability.metrics import CATALOGUE

    dash = json.loads((REPO_ROOT / "cluster" / "monitoring" / "grafana-dashboard.json").read_text())
    assert dash["panels"]
    covered = set()
    for panel in dash["panels"]:
        names = {
            re.sub(r"_(bucket|sum|count)$", "", m)
            for t in panel["targets"]
            for m in re.findall(r"\bray_(servekit_[a-z_]+)", t["expr"])
        }
        assert names, f"panel {panel['title']!r} queries no servekit metric"
        unknown = names - set(CATALOGUE)
        assert unknown == set(), f"panel {panel['title']!r} queries undefined {unknown}"
        covered |= names
    assert covered == set(CATALOGUE), f"metrics without a panel: {set(CATALOGUE) - covered}"


def test_check_mode_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "rayservice.yaml"
    stale.write_text("stale\n")
    monkeypatch.setattr(kube, "MANIFEST", stale)
    # `main` writes every manifest: the NetworkPolicy goes to a copy, never the repo's.
    current = tmp_path / "networkpolicy.yaml"
    current.write_text(kube.render_network_policy())
    monkeypatch.setattr(kube, "NETWORK_POLICY", current)
    assert kube.main(["--check"]) == 1
    assert kube.main([]) == 0
    assert kube.main(["--check"]) == 0


def _manifest_with(tmp_path: Path, edit: Any) -> Path:
    """The current manifest with its embedded Serve config changed by `edit`, as the
    manifest a cluster was given before."""
    doc = yaml.safe_load(kube.render())
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    edit(serve["applications"][0]["args"]["models"]["minilm"]["versions"])
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    path = tmp_path / "rayservice.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_kube(monkeypatch: pytest.MonkeyPatch, manifest: Path, *argv: str) -> int:
    monkeypatch.setattr(kube, "MANIFEST", manifest)
    monkeypatch.setattr(kube, "NETWORK_POLICY", manifest.parent / "networkpolicy.yaml")
    return kube.main(list(argv))


def test_make_cluster_refuses_a_version_the_cluster_ran_with_other_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def older_v1(versions: dict[str, Any]) -> None:
        versions["v1"]["artifact"]["sha256"] = "0a" * 32

    old = _manifest_with(tmp_path, older_v1)
    before = old.read_text()
    assert _run_kube(monkeypatch, old) == 1
    err = capsys.readouterr().err
    assert "applications[0].args.models.minilm.versions.v1: minilm/v1 runs in the cluster" in err
    assert "artifact.sha256" in err
    assert "--allow-changed-versions" in err
    assert old.read_text() == before  # nothing written

    assert _run_kube(monkeypatch, old, "--allow-changed-versions") == 0
    assert old.read_text() == kube.render()


def test_make_cluster_writes_a_manifest_that_adds_or_drops_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def one_version_less(versions: dict[str, Any]) -> None:
        versions.pop("v2")

    old = _manifest_with(tmp_path, one_version_less)
    assert _run_kube(monkeypatch, old) == 0
    assert old.read_text() == kube.render()
    # An unreadable manifest (hand-edited, half written) holds nothing to compare.
    old.write_text("not: [a manifest")
    assert _run_kube(monkeypatch, old) == 0
