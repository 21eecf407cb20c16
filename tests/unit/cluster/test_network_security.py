"""The Ray cluster is closed by default: token authentication on, and a NetworkPolicy
that lets only the named namespaces reach only the named ports of the Ray pods."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from configs.cluster import ClusterSettings, load_cluster_settings
from servekit import kube
from tests.conftest import REPO_ROOT
from tests.unit.cluster.stack_util import PRIVATE_SUBNET_ADDRESS

# Ports a Ray pod listens on; besides these, Ray uses many more between its own pods
# (raylet, object manager, workers), which the "any port" below stands for.
SERVE, DASHBOARD, GCS, CLIENT, METRICS, ANY_RAY_PORT = 8000, 8265, 6379, 10001, 8080, 52365
ALL_PORTS = (SERVE, DASHBOARD, GCS, CLIENT, METRICS, ANY_RAY_PORT)


@pytest.fixture(scope="module")
def settings() -> ClusterSettings:
    return load_cluster_settings(kube.SETTINGS)


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(kube.NETWORK_POLICY.read_text())
    return doc


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(kube.MANIFEST.read_text())
    return doc


def _pod_templates(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"] for g in groups]


# --- a NetworkPolicy evaluator for the selectors the policy uses ----------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"evaluator knows matchLabels only: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_admits(peer: dict[str, Any], policy_ns: str, ns: str, labels: dict[str, str]) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"unknown peer {peer}"
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": ns}
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif ns != policy_ns:  # a podSelector alone selects in the policy's own namespace
        return False
    return "podSelector" not in peer or _matches(peer["podSelector"], labels)


def admitted(policy: dict[str, Any], ns: str, labels: dict[str, str], port: int) -> bool:
    """Whether a pod in namespace `ns` with `labels` may open TCP `port` on the selected
    pods, as Kubernetes evaluates an ingress NetworkPolicy (rules are OR-ed)."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    policy_ns = policy["metadata"]["namespace"]
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        ports = rule.get("ports")
        from_ok = not peers or any(_peer_admits(p, policy_ns, ns, labels) for p in peers)
        port_ok = not ports or any(
            p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
        )
        if from_ok and port_ok:
            return True
    return False


def test_evaluator_is_not_vacuous(policy: dict[str, Any]) -> None:
    open_policy = copy.deepcopy(policy)
    open_policy["spec"]["ingress"].append({})  # an empty rule admits everyone everywhere
    assert admitted(open_policy, "default", {}, GCS)
    assert not admitted(policy, "default", {}, GCS)


# --- the policy --------------------------------------------------------------------


def test_network_policy_is_current() -> None:
    assert kube.NETWORK_POLICY.read_text() == kube.render_network_policy(), (
        "stale: run `make cluster`"
    )


def _kubernetes_version() -> str:
    """The EKS version the CDK stack creates, so the policy is checked against it."""
    stack = (REPO_ROOT / "cluster" / "cdk" / "servekit_stack.py").read_text()
    found = re.search(r"KubernetesVersion\.V1_(\d+)\b", stack)
    assert found is not None
    return f"1.{found.group(1)}.0"


def test_network_policy_matches_kubernetes_schema(policy: dict[str, Any]) -> None:
    import kubernetes_validate

    # Strict: an unknown field is an error, as `kubectl apply --validate=strict` makes it.
    kubernetes_validate.validate(policy, _kubernetes_version(), strict=True)
    broken = copy.deepcopy(policy)
    broken["spec"]["ingress"][0]["form"] = broken["spec"]["ingress"][0].pop("from")
    with pytest.raises(kubernetes_validate.ValidationError, match="form"):
        kubernetes_validate.validate(broken, _kubernetes_version(), strict=True)


def test_policy_selects_every_ray_pod(policy: dict[str, Any], rayservice: dict[str, Any]) -> None:
    assert policy["metadata"]["namespace"] == rayservice["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]
    for template in _pod_templates(rayservice):
        assert _matches(selector, template["metadata"]["labels"])


def test_ray_pods_reach_each_other_on_every_port(
    policy: dict[str, Any], rayservice: dict[str, Any]
) -> None:
    ns = rayservice["metadata"]["namespace"]
    for template in _pod_templates(rayservice):
        for port in ALL_PORTS:
            assert admitted(policy, ns, template["metadata"]["labels"], port), port


def test_outside_the_ray_pods_only_the_named_ports_are_open(
    policy: dict[str, Any], rayservice: dict[str, Any], settings: ClusterSettings
) -> None:
    net = settings.network
    ray_labels = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"][
        "labels"
    ]
    own_ns = rayservice["metadata"]["namespace"]
    expected: dict[str, set[int]] = {ns: {SERVE} for ns in net.serve_client_namespaces}
    expected[net.operator_namespace] = {DASHBOARD, SERVE}
    assert net.monitoring_namespace is not None
    expected[net.monitoring_namespace] = {METRICS}
    # Another pod of the service's own namespace, and namespaces nobody named.
    expected.setdefault(own_ns, set())
    expected.setdefault("default", set())
    expected.setdefault("kube-system", set())
    for ns, ports in expected.items():
        for labels in ({}, {"app": "anything"}):
            open_ports = {p for p in ALL_PORTS if admitted(policy, ns, labels, p)}
            assert open_ports == ports, (ns, labels)
    # Ray's labels on a pod in another namespace admit nothing more.
    assert not admitted(policy, "default", ray_labels, GCS)
    # Dashboard, GCS and the Ray client port: never from anyone but the operator.
    for ns in expected:
        assert not admitted(policy, ns, {}, GCS)
        assert not admitted(policy, ns, {}, CLIENT)
        assert admitted(policy, ns, {}, DASHBOARD) == (ns == net.operator_namespace)


def test_policy_follows_the_settings(settings: ClusterSettings) -> None:
    network = settings.network.model_copy(
        update={"serve_client_namespaces": ["shop", "search"], "monitoring_namespace": None}
    )
    policy = kube.network_policy(settings.model_copy(update={"network": network}))
    assert admitted(policy, "shop", {}, SERVE)
    assert admitted(policy, "search", {}, SERVE)
    assert not admitted(policy, settings.network.serve_client_namespaces[0], {}, SERVE)
    assert not admitted(policy, "monitoring", {}, METRICS)


def test_serve_port_is_the_serve_configs(rayservice: dict[str, Any]) -> None:
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded["http_options"]["port"] == SERVE == kube.SERVE_PORT
    (head,) = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports == {
        "gcs-server": GCS,
        "dashboard": DASHBOARD,
        "client": CLIENT,
        "serve": SERVE,
        "metrics": METRICS,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"serve_client_namespaces": []}, "at least 1 item"),
        ({"serve_client_namespaces": ["Shop_Backends"]}, "should match pattern"),
        ({"operator_namespace": "-kuberay"}, "should match pattern"),
        ({"open_to_all": True}, "Extra inputs are not permitted"),
    ],
)
def test_settings_refuse_bad_network_fields(
    settings: ClusterSettings, change: dict[str, Any], message: str
) -> None:
    doc = settings.model_dump()
    doc["network"].update(change)
    with pytest.raises(ValidationError, match=message):
        ClusterSettings.model_validate(doc)


# --- egress: the stores the pods call -------------------------------------------------

REGISTRY, REDIS = 5432, 6379


def egress_allowed(policy: dict[str, Any], address: str, port: int) -> bool:
    """Whether the selected pods may open TCP `port` to `address` outside the cluster,
    as Kubernetes evaluates an egress NetworkPolicy (no Egress type: anything goes)."""
    spec = policy["spec"]
    if "Egress" not in spec["policyTypes"]:
        return True
    ip = ipaddress.ip_address(address)
    for rule in spec.get("egress", []):
        peers, ports = rule.get("to"), rule.get("ports")
        to_ok = not peers or any(
            "ipBlock" in peer
            and ip in ipaddress.ip_network(peer["ipBlock"]["cidr"])
            and not any(ip in ipaddress.ip_network(c) for c in peer["ipBlock"].get("except", []))
            for peer in peers
        )
        port_ok = not ports or any(
            p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
        )
        if to_ok and port_ok:
            return True
    return False


def test_ray_pods_reach_the_registry_and_redis(policy: dict[str, Any]) -> None:
    for port in (REGISTRY, REDIS):
        assert egress_allowed(policy, PRIVATE_SUBNET_ADDRESS, port), port
    # The evaluator refuses what a restricting policy leaves out.
    closed = copy.deepcopy(policy)
    closed["spec"]["policyTypes"] = ["Ingress", "Egress"]
    closed["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}], "ports": _tcp(53)}]
    assert not egress_allowed(closed, PRIVATE_SUBNET_ADDRESS, REGISTRY)
    closed["spec"]["egress"].append(
        {"to": [{"ipBlock": {"cidr": "10.0.64.0/19"}}], "ports": _tcp(REGISTRY, REDIS)}
    )
    assert egress_allowed(closed, PRIVATE_SUBNET_ADDRESS, REDIS)


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


# --- token authentication -------------------------------------------------------------


def test_ray_token_authentication_is_on(rayservice: dict[str, Any]) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    # KubeRay generates the token Secret per RayCluster and injects it: no token, and no
    # Secret name that someone would have to fill by hand, is in the manifest.
    assert cluster["authOptions"] == {"mode": "token"}
    for template in _pod_templates(rayservice):
        for container in template["spec"]["containers"]:
            names = {e["name"] for e in container["env"]}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, "KubeRay sets these"


def test_check_mode_detects_a_stale_network_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "networkpolicy.yaml"
    stale.write_text("stale\n")
    monkeypatch.setattr(kube, "NETWORK_POLICY", stale)
    # `main` writes every manifest: the RayService one goes to a copy, never the repo's.
    current = tmp_path / "rayservice.yaml"
    current.write_text(kube.render())
    monkeypatch.setattr(kube, "MANIFEST", current)
    assert kube.main(["--check"]) == 1
    assert kube.main([]) == 0
    assert stale.read_text() == kube.render_network_policy()
    assert kube.main(["--check"]) == 0
