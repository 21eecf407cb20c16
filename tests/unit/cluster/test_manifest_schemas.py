"""Every manifest in `cluster/` as a real cluster would take it, checked offline.

Strictly against the schemas the API server uses (an unknown field is an error, as
`kubectl apply --validate=strict` makes it, not a field silently pruned), for the shipped
settings and for the other shapes the generator makes; against the rules the KubeRay
operator applies before it creates anything; and against the invariants that hold the
pieces together (ports, labels, resources, the embedded Serve config). Where each schema
comes from: `tests/unit/cluster/schemas/README.md`.
"""

from __future__ import annotations

import copy
import re
import typing
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from configs.cluster import ClusterSettings, load_cluster_settings
from servekit import kube
from tests.conftest import REPO_ROOT

SCHEMAS = Path(__file__).parent / "schemas"
KUBERAY_CRD = REPO_ROOT.parent / "shared" / "schemas" / "kuberay" / "ray.io_rayservices.yaml"
# The KubeRay release the CRD above is (and whose operator rules are below).
KUBERAY_VERSION = "1.7.0"
MONITORING = REPO_ROOT / "cluster" / "monitoring"


# --- schemas --------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """An OpenAPI v3 schema where objects with known properties admit no others."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def _duplicate_keys(schema: dict[str, Any], doc: Any, path: str = "") -> list[str]:
    """Entries of `x-kubernetes-list-type: map` lists that share their keys (the API
    server refuses them; JSON schema does not know the rule)."""
    found: list[str] = []
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in doc.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            found += _duplicate_keys(sub, value, f"{path}.{key}")
    elif isinstance(doc, list):
        item = schema.get("items", {})
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            defaults = {k: item["properties"][k].get("default") for k in keys}
            seen = [tuple(entry.get(k, defaults[k]) for k in keys) for entry in doc]
            found += [f"{path}: {dup} twice" for dup in set(seen) if seen.count(dup) > 1]
        for i, entry in enumerate(doc):
            found += _duplicate_keys(item, entry, f"{path}[{i}]")
    return found


def _errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors] + _duplicate_keys(
        schema, doc
    )


@cache
def _kuberay_schema() -> dict[str, Any]:
    if not KUBERAY_CRD.is_file():  # a checkout without the schemas beside it
        pytest.skip(f"KubeRay's RayService CRD is not at {KUBERAY_CRD}")
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _vendored(name: str) -> tuple[str, str, dict[str, Any]]:
    doc = yaml.safe_load((SCHEMAS / f"{name}.yaml").read_text())
    return f"{doc['group']}/{doc['version']}", doc["kind"], doc["openAPIV3Schema"]


def _kubernetes_version() -> str:
    """The EKS version the CDK stack creates."""
    stack = (REPO_ROOT / "cluster" / "cdk" / "servekit_stack.py").read_text()
    found = re.search(r"KubernetesVersion\.V1_(\d+)\b", stack)
    assert found is not None
    return f"1.{found.group(1)}.0"


def test_the_kuberay_schema_is_the_operators_version() -> None:
    stack = (REPO_ROOT / "cluster" / "cdk" / "servekit_stack.py").read_text()
    found = re.search(r'KUBERAY_CHART_VERSION = "([\d.]+)"', stack)
    assert found is not None
    assert found.group(1) == KUBERAY_VERSION, "refresh the CRD and the rules below with it"
    assert (
        "KubeRay operator " + KUBERAY_VERSION.rsplit(".", 1)[0]
        in (REPO_ROOT / "README.md").read_text()
    )


# --- the shapes the generator makes ---------------------------------------------------


def _settings(**change: Any) -> ClusterSettings:
    doc = load_cluster_settings(kube.SETTINGS).model_dump()
    for key, value in change.items():
        doc[key] = value
    return ClusterSettings.model_validate(doc)


def _variants() -> dict[str, ClusterSettings]:
    shipped = load_cluster_settings(kube.SETTINGS).model_dump()
    plain_group = {**shipped["worker_groups"][0], "name": "plain", "node_selector": {}}
    return {
        "shipped": _settings(),
        "traces-and-no-scraper": _settings(
            tracing={"otlp_endpoint": "http://otel-collector.monitoring:4318"},
            network={**shipped["network"], "monitoring_namespace": None},
        ),
        "one-group-without-selector": _settings(worker_groups=[plain_group]),
    }


VARIANTS = _variants()


def _rayservice(settings: ClusterSettings) -> dict[str, Any]:
    # Through the YAML the file holds, so the types are those kubectl sends.
    doc: dict[str, Any] = yaml.safe_load(kube._dump(kube.rayservice(kube.SERVE_CONFIG, settings)))
    return doc


def _groups(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster["workerGroupSpecs"]
    ]


def test_the_committed_manifests_are_the_shipped_variant() -> None:
    assert yaml.safe_load(kube.MANIFEST.read_text()) == _rayservice(VARIANTS["shipped"])
    assert yaml.safe_load(kube.NETWORK_POLICY.read_text()) == kube.network_policy(
        VARIANTS["shipped"]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_matches_the_kuberay_crd(variant: str) -> None:
    manifest = _rayservice(VARIANTS[variant])
    assert _errors(_kuberay_schema(), manifest) == []
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParms"), {}, "rayStartParms"),
        (("spec", "rayClusterConfig", "authOptions", "mode"), "Token", "'Token' is not one of"),
        (("spec", "rayClusterConfig", "enableInTreeAutoscaling"), "true", "is not of type"),
        (
            ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers"),
            [{"name": "ray-head", "image": "a:1"}, {"name": "ray-head", "image": "b:1"}],
            "('ray-head',) twice",
        ),
    ],
)
def test_the_crd_check_catches_what_the_api_server_refuses(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    broken = _rayservice(VARIANTS["shipped"])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(expected in e for e in _errors(_kuberay_schema(), broken))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_templates_match_the_kubernetes_schema(variant: str) -> None:
    """The pods KubeRay creates from the templates are checked by the API server
    against Kubernetes' own Pod schema, not the CRD's copy of it."""
    import kubernetes_validate

    for name, group in _groups(_rayservice(VARIANTS[variant])):
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name, "namespace": VARIANTS[variant].namespace},
            "template": group["template"],
        }
        kubernetes_validate.validate(template, _kubernetes_version(), strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policy_matches_the_kubernetes_schema(variant: str) -> None:
    import kubernetes_validate

    policy = kube.network_policy(VARIANTS[variant])
    kubernetes_validate.validate(policy, _kubernetes_version(), strict=True)


@pytest.mark.parametrize(
    ("manifest", "schema"),
    [("podmonitor.yaml", "podmonitor"), ("alerts.yaml", "prometheusrule")],
)
def test_monitoring_manifests_match_the_prometheus_operator_crds(
    manifest: str, schema: str
) -> None:
    api_version, kind, openapi = _vendored(schema)
    doc = yaml.safe_load((MONITORING / manifest).read_text())
    assert (doc["apiVersion"], doc["kind"]) == (api_version, kind)
    assert _errors(openapi, doc) == []
    broken = copy.deepcopy(doc)
    broken["spec"]["selectr"] = broken["spec"].pop("selector", {})
    assert any("selectr" in e for e in _errors(openapi, broken))


# --- what the KubeRay operator refuses before it creates anything ----------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def kuberay_refusals(manifest: dict[str, Any]) -> list[str]:
    """The checks of KubeRay 1.7.0's ValidateRayServiceMetadata and ValidateRayServiceSpec
    (ray-operator/controllers/ray/utils/validation.go) that a manifest of this shape can
    fail: the operator refuses such a RayService with an event and creates nothing."""
    refused = []
    name = manifest["metadata"]["name"]
    if len(name) > 47 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        refused.append("metadata.name: a DNS-1035 label of at most 47 characters")
    spec = manifest["spec"]
    upgrade = spec.get("upgradeStrategy", {}).get("type")
    if upgrade not in (None, "NewCluster", "NewClusterWithIncrementalUpgrade", "None"):
        refused.append(f"upgradeStrategy.type: {upgrade}")
    cluster = spec["rayClusterConfig"]
    auth = cluster.get("authOptions", {})
    if auth.get("enableK8sTokenAuth"):
        refused.append("authOptions.enableK8sTokenAuth: not for a RayService")
    if auth.get("mode") == "token" and _version(cluster.get("rayVersion", "0")) < (2, 52, 0):
        refused.append("authOptions.mode token: rayVersion 2.52.0 or later")
    for group_name, group in _groups(manifest):
        if not group["template"]["spec"].get("containers"):
            refused.append(f"{group_name}: no container")
        params = group.get("rayStartParams", {})
        if "labels" in params:
            refused.append(f"{group_name}: rayStartParams labels")
        if group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(params):
            refused.append(f"{group_name}: resources in both rayStartParams and resources")
        if group_name != "head":
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if low < 0 or high < 0 or low > high:
                refused.append(f"{group_name}: minReplicas {low}, maxReplicas {high}")
            if "idleTimeoutSeconds" in group:
                refused.append(f"{group_name}: idleTimeoutSeconds needs autoscaler v2")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in head.get("env", [])}
    if "RAY_REDIS_ADDRESS" in env and "gcsFaultToleranceOptions" not in cluster:
        refused.append("RAY_REDIS_ADDRESS without gcsFaultToleranceOptions")
    if not any(p.get("name") == "serve" for p in head.get("ports", [])):
        refused.append("head: no port named serve (no Serve Service)")
    return refused


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kuberay_operator_accepts_the_rayservice(variant: str) -> None:
    assert kuberay_refusals(_rayservice(VARIANTS[variant])) == []


def test_the_operator_rules_catch_what_kuberay_refuses() -> None:
    broken = _rayservice(VARIANTS["shipped"])
    broken["metadata"]["name"] = "9-servekit"
    cluster = broken["spec"]["rayClusterConfig"]
    cluster["rayVersion"] = "2.51.1"
    cluster["workerGroupSpecs"][0]["minReplicas"] = 9
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"] = [p for p in head["ports"] if p["name"] != "serve"]
    assert len(kuberay_refusals(broken)) == 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "9servekit"}, "name"),
        ({"name": "s" * 48}, "name"),
        ({"head": {"cpu": "2 cores", "memory": "8Gi"}}, "head.cpu"),
        ({"head": {"cpu": "2", "memory": "8GB"}}, "head.memory"),
    ],
)
def test_settings_refuse_what_kuberay_or_kubernetes_would(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**change)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [field]


def test_settings_take_every_quantity_form() -> None:
    for cpu, memory in (("500m", "512Mi"), ("0.5", "16G"), ("4", "17179869184")):
        assert _settings(head={"cpu": cpu, "memory": memory}).head.cpu == cpu
    assert _settings(name="s" * 47).name == "s" * 47


# --- what holds the pieces together ---------------------------------------------------


def _containers(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [
        (f"{name}/{c['name']}", c)
        for name, group in _groups(manifest)
        for c in group["template"]["spec"]["containers"]
    ]
    autoscaler = manifest["spec"]["rayClusterConfig"].get("autoscalerOptions", {})
    return [*found, ("head/autoscaler", autoscaler)]


def _amount(resource: str, quantity: str | int) -> float:
    """A CPU quantity in cores, a memory quantity in bytes."""
    text = str(quantity)
    if resource == "cpu":
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    found = re.fullmatch(r"([0-9.]+)([KMGTPE]i?|k)?", text)
    assert found is not None, text
    number, suffix = found.groups()
    powers = {"k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
    if not suffix:
        return float(number)
    base = 1024 if suffix.endswith("i") else 1000
    return float(number) * float(base ** powers[suffix[0]])


@pytest.mark.parametrize("variant", VARIANTS)
def test_requests_are_within_limits(variant: str) -> None:
    for where, container in _containers(_rayservice(VARIANTS[variant])):
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert set(requests) == set(limits), where
        for resource, asked in requests.items():
            if resource in ("cpu", "memory"):
                assert _amount(resource, asked) <= _amount(resource, limits[resource]), where
            else:  # extended resources (GPUs): the API server wants them equal
                assert asked == limits[resource], where
    assert _amount("memory", "1Gi") > _amount("memory", "1G") > _amount("memory", "953Mi")


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_agree(variant: str) -> None:
    settings = VARIANTS[variant]
    manifest = _rayservice(settings)
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    groups = dict(_groups(manifest))
    head = groups["head"]["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    # The names KubeRay looks the ports up by; Ray listens where rayStartParams and the
    # Serve config say (or on its defaults).
    params = groups["head"]["rayStartParams"]
    assert head_ports == {
        "gcs-server": int(params.get("port", 6379)),
        "dashboard": int(params.get("dashboard-port", 8265)),
        "client": int(params.get("ray-client-server-port", 10001)),
        "serve": embedded["http_options"]["port"],
        "metrics": int(params["metrics-export-port"]),
    }
    for name, group in groups.items():
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"]), name
    # Every port the NetworkPolicy opens to another namespace is one a Ray pod listens on.
    policy = kube.network_policy(settings)
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert opened <= set(head_ports.values())
    assert head_ports["serve"] in opened
    assert (head_ports["metrics"] in opened) == (settings.network.monitoring_namespace is not None)
    # The PodMonitor scrapes a port every Ray pod names.
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for name, group in groups.items():
            names = {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert endpoint["port"] in names, name


# Labels KubeRay sets on every Ray pod and selects its Services by; a template may not
# take them over (KubeRay ignores some, and the others would leave a Service empty).
KUBERAY_POD_LABELS = ("ray.io/cluster", "ray.io/node-type", "ray.io/group", "ray.io/serve")
# KubeRay's RayService head Service selects `app.kubernetes.io/name: kuberay` whatever the
# pods say (ray-operator common/service.go, BuildHeadServiceForRayService): a pod template
# that sets the label otherwise leaves `<name>-head-svc` without an endpoint.
KUBERAY_SELECTED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/created-by")


@pytest.mark.parametrize("variant", VARIANTS)
def test_labels_and_selectors_match(variant: str) -> None:
    settings = VARIANTS[variant]
    manifest = _rayservice(settings)
    policy = kube.network_policy(settings)
    assert policy["metadata"]["namespace"] == manifest["metadata"]["namespace"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name, group in _groups(manifest):
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert not set(labels) & set(KUBERAY_POD_LABELS), name
        assert not set(labels) & set(KUBERAY_SELECTED_LABELS), name
        for key, value in labels.items():
            assert len(value) <= 63, (name, key)
            assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value), (name, key)


# --- the embedded Serve config ----------------------------------------------------------


def _unknown_fields(model: Any, data: Any, path: str = "") -> list[str]:
    """Keys of a Serve config that no field of Ray Serve's schema takes: Ray's schema
    lets them through (for forward compatibility) and Serve then ignores them, so a
    misspelt setting would silently not apply."""
    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    fields = {}
    for field_name, field in model.model_fields.items():
        fields[field_name] = field
        if field.alias:
            fields[field.alias] = field

    def models(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models(arg)]

    unknown = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            unknown.append(where)
            continue
        for sub in models(fields[key].annotation):
            values = value if isinstance(value, list) else [value]
            for i, item in enumerate(values):
                at = f"{where}[{i}]" if isinstance(value, list) else where
                unknown += _unknown_fields(sub, item, at)
    return unknown


def test_the_embedded_serve_config_has_only_fields_serve_knows() -> None:
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(yaml.safe_load(kube.MANIFEST.read_text())["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert _unknown_fields(ServeDeploySchema, embedded) == []
    misspelt = copy.deepcopy(embedded)
    deployment = misspelt["applications"][0]["deployments"][0]
    deployment["max_ongoing_request"] = 8
    deployment["autoscaling_config"]["upscale_delay"] = 1
    misspelt["http_options"]["request_timeout"] = 1
    ServeDeploySchema.model_validate(misspelt)  # what Ray alone would let through
    assert sorted(_unknown_fields(ServeDeploySchema, misspelt)) == [
        "applications[0].deployments[0].autoscaling_config.upscale_delay",
        "applications[0].deployments[0].max_ongoing_request",
        "http_options.request_timeout",
    ]
