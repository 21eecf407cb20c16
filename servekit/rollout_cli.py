"""`servekit promote`, `rollback`, `apply` and `status`."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

import yaml

from servekit import instance
from servekit.configedit import ConfigFile, EditError, promote, rollback
from servekit.deployed import changed_versions, deployed_apps, pending_diff

# Where changes are applied: "local" (the instance `servekit serve` runs on this
# machine, reached as a Ray driver: no dashboard needed), a GCS address (host:port),
# or a dashboard URL (http://..., as `serve deploy` takes: clusters, KubeRay).
LOCAL = "local"
DEFAULT_ADDRESS = os.environ.get("RAY_DASHBOARD_ADDRESS", LOCAL)
DEFAULT_URL = os.environ.get("SERVEKIT_URL", "http://127.0.0.1:8000")
P = ParamSpec("P")


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[None]:
    """Hold the file's edit lock (`.<file>.lock` beside it): a second `promote` or
    `rollback` on the same file waits, then edits what the first one wrote."""
    import fcntl

    real = path.resolve()  # the file a symlink names: every link to it shares the lock
    lock = real.with_name(f".{real.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file's content in one step (a reader sees the old file or the new,
    never a truncated one), keeping its permissions; a symlink stays a link, its
    target is what is replaced."""
    real = path.resolve()
    tmp = real.with_name(f".{real.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    with contextlib.suppress(OSError):
        os.chmod(tmp, real.stat().st_mode & 0o7777)
    os.replace(tmp, real)


Edit = Callable[Concatenate[Path, P], int]


def _holding_edit_lock(edit: Edit[P]) -> Edit[P]:
    """Run `edit(path, ...)` holding the file's edit lock from reading it to applying
    it (see `_editing`); a missing file is refused first (exit 2)."""

    @functools.wraps(edit)
    def locked(path: Path, /, *args: P.args, **kwargs: P.kwargs) -> int:
        if not path.is_file():
            what = "is a directory, not a config file" if path.is_dir() else "no such file"
            print(f"servekit: {path}: {what}", file=sys.stderr)
            return 2
        with _editing(path):
            return edit(path, *args, **kwargs)

    return locked


@_holding_edit_lock
def edit_and_apply(
    path: Path,
    model: str,
    action: str,
    arg: Any,
    dry_run: bool,
    apply: bool,
    address: str,
    allow_incomplete_index: bool = False,
    url: str = DEFAULT_URL,
) -> int:
    """Edit the traffic of `model`, show the diff, validate, write and apply, holding
    the file's edit lock throughout. A promote, and a rollback, refuse to give traffic
    to a version whose search index is incomplete (promote: the version promoted;
    rollback: each version it gives traffic that had none) unless
    `allow_incomplete_index` (a dry run says so, refusing nothing); `url`: servekit's
    HTTP address, asked whether those indexes are complete. An apply that would change
    the artifact, runtime or task of a version Serve runs is refused as well (see
    `deployed.changed_versions`)."""
    from servekit.local import check_document

    try:
        cfg = ConfigFile.load(path)
        before = _weights_of(cfg, model)
        if action == "promote":
            version, weight = arg
            notes = promote(cfg, model, version, weight)
            gaining = [version] if weight > 0 else []
        else:
            notes = rollback(cfg, model, arg)
            after = _weights_of(cfg, model)
            gaining = [v for v, w in after.items() if w > 0 and not before.get(v, 0)]
    except EditError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 2
    if gaining and (apply or dry_run) and not allow_incomplete_index:
        blockers = search_index_blockers(url, model, gaining, unasked=_cannot_ask)
        if blockers and dry_run:
            for blocker in blockers:
                print(f"note: applying would be refused: {blocker}")
        elif blockers:
            for blocker in blockers:
                print(f"servekit: {blocker}", file=sys.stderr)
            if action == "rollback":
                print(ROLLBACK_INDEX_HINT, file=sys.stderr)
            return 1
    # Feasibility first: a change that cannot be deployed shows no diff.
    problems = check_document(yaml.safe_load(cfg.render()))
    if problems:
        for problem in problems:
            print(f"servekit: the change would make the file invalid: {problem}", file=sys.stderr)
        return 1
    diff = cfg.diff()
    # An apply deploys the whole file: what it already says that is not deployed goes
    # with the edit, so it is shown too (a hand-added block, an earlier --no-apply).
    deployed = _deployed(address) if apply or dry_run else None
    pending = None
    if deployed is not None:
        pending = pending_diff(deployed, yaml.safe_load(cfg.text), str(path))
        changed = changed_versions(deployed, yaml.safe_load(cfg.render()))
        if changed and dry_run:
            for line in changed:
                print(f"note: applying would be refused: {line}")
        elif changed and apply:
            for line in changed:
                print(f"servekit: {line}", file=sys.stderr)
            print("servekit: nothing written, nothing applied", file=sys.stderr)
            return 1
    if not diff:
        if dry_run or not apply:
            print(f"servekit: {path} already says so; nothing to change")
            if pending:
                print(f"the service differs from {path}; applying would deploy:")
                print(pending, end="")
            return 0
        if pending == "":
            print(f"servekit: {path} already says so, and so does the service; nothing to apply")
            return 0
        # Written without being deployed (`--no-apply`, a hand edit), or the service
        # cannot be asked: apply it; Serve changes nothing when the service matches it.
        print(f"servekit: {path} already says so; applying it, as the service may differ")
        if pending:
            print(pending, end="")
        return deploy(path, address, versions_checked=True)
    print(diff, end="")
    if pending:
        print(f"{path} already differed from the service; applying deploys that too:")
        print(pending, end="")
    for note in notes:
        print(f"note: {note}")
    if dry_run:
        print("dry run: nothing written, nothing applied")
        return 0
    if path.read_text() != cfg.text:  # edited meanwhile, by hand or another tool
        print(f"servekit: {path} changed while this edit was prepared; run it again",
              file=sys.stderr)  # fmt: skip
        return 1
    _write_atomically(path, cfg.render())
    print(f"wrote {path}")
    if not apply:
        print(f"not applied: `servekit apply {path}` deploys it")
        return 0
    return deploy(path, address, versions_checked=True)


# What a rollback refused for an incomplete search index may do instead.
ROLLBACK_INDEX_HINT = (
    "servekit: nothing written, nothing applied. Roll back to a version whose indexes "
    "are complete with --to, or pass --allow-incomplete-index to roll back anyway (until "
    "its index is complete, searches of those catalogs use another version's complete "
    "index while a replica still keeps one, else answer 503 index_building; embeddings "
    "are not affected)"
)


def _weights_of(cfg: ConfigFile, model: str) -> dict[str, int]:
    """The model's weights in the file as it is now (empty when it has none)."""
    try:
        return {str(v): int(w) for v, w in cfg.traffic(model).items()}
    except (EditError, TypeError, ValueError, AttributeError):
        return {}


def _deployed(address: str) -> dict[str, dict[str, Any]] | None:
    """Each application's config as Serve last deployed it (see `deployed_apps`); None,
    with a note, when the service cannot be asked."""
    try:
        details = _serve_details(address)
    except instance.InstanceError as e:
        print(f"note: cannot compare with what is deployed ({e})")
        return None
    if details is None:
        print(f"note: cannot compare with what is deployed (no answer from {address})")
        return None
    return deployed_apps(details)


def refuse_changed_versions(doc: dict[str, Any], details: dict[str, Any]) -> bool:
    """Print why `doc` may not be applied over what `details` (Serve's) say runs, and
    say so, when it changes what a deployed version name stands for."""
    changed = changed_versions(deployed_apps(details), doc)
    for line in changed:
        print(f"servekit: {line}", file=sys.stderr)
    if changed:
        print("servekit: nothing applied", file=sys.stderr)
    return bool(changed)


def _serve_details(address: str) -> dict[str, Any] | None:
    """Serve's instance details (as `serve status` reads them), or None."""
    if _is_dashboard_url(address):
        try:
            details: dict[str, Any] = _get(f"{address}/api/serve/applications/", ray_auth_headers())
        except (URLError, OSError, ValueError):
            return None
        return details
    try:
        with _as_driver(address):
            return _driver_details()
    except instance.InstanceError:
        raise
    except (ConnectionError, RuntimeError):
        return None


def _driver_details() -> dict[str, Any]:
    """Serve's instance details, asked as the connected driver ({}: Serve not started)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return {} if client is None else dict(client.get_serve_details())


def deploy(path: Path, address: str, versions_checked: bool = False) -> int:
    """Apply the file to a running instance: `serve deploy` to a dashboard URL, or
    as a Ray driver for `local` and GCS addresses. Refused when it would change the
    artifact, runtime or task of a version Serve runs (unless `versions_checked`: the
    caller compared already)."""
    from servekit import local

    try:
        doc = local.load_config(path)
    except local.DeployError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    if not _is_dashboard_url(address):
        return deploy_as_driver(doc, address, check_versions=not versions_checked)
    if not versions_checked:
        details = _serve_details(address)
        if details is None:
            print(f"note: cannot compare with what is deployed (no answer from {address})")
        elif refuse_changed_versions(doc, details):
            return 1
    serve_cli = Path(sys.executable).with_name("serve")
    token_mode_if_token()  # a token is at hand: let `serve` send it
    done = subprocess.run([str(serve_cli), "deploy", str(path), "--address", address], check=False)
    if done.returncode != 0:
        print(f"servekit: serve deploy to {address} failed", file=sys.stderr)
        return 1
    print(f"applied to {address}")
    return 0


def token_mode_if_token() -> None:
    """Ray's local instances run with token auth; a driver sends the token only in
    token mode, so turn it on when a token is at hand (and nothing says otherwise).
    Ray reads the mode when it is first imported: call this before."""
    if "RAY_AUTH_MODE" not in os.environ and ray_auth_headers():
        os.environ["RAY_AUTH_MODE"] = "token"


def loopback_if_local(address: str) -> None:
    """A driver of the instance `servekit serve` runs here reaches it at the loopback
    address that instance binds to (see `local.before_ray`): Ray keeps a 127.0.0.1
    address as given only with clusters off. Before Ray is imported."""
    from servekit.local import LOOPBACK, ONE_MACHINE_ENV

    if address == LOCAL or address.rsplit(":", 1)[0] in LOOPBACK:
        os.environ.setdefault(ONE_MACHINE_ENV, "0")


def _is_dashboard_url(address: str) -> bool:
    return address.startswith(("http://", "https://"))


def gcs_address(address: str) -> str:
    """The GCS address a driver connects to: `local` is the one local instance of this
    checkout that runs (its record says where; raises InstanceError when none or
    several run), never whichever Ray instance Ray would pick."""
    return instance.local_address() if address == LOCAL else address


def _shown(address: str) -> str:
    """`local (127.0.0.1:6379)` for `local`; any other address as it is."""
    if address != LOCAL:
        return address
    with contextlib.suppress(instance.InstanceError):
        return f"{LOCAL} ({instance.local_address()})"
    return address


@contextlib.contextmanager
def _as_driver(address: str) -> Iterator[None]:
    """Connected to the instance at `address` as a Ray driver; disconnected after,
    leaving the instance running. Raises InstanceError when `local` names no single
    instance, ConnectionError when nothing answers."""
    import ray

    target = gcs_address(address)
    try:
        ray.init(
            address=target,
            namespace="serve",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()


def deploy_as_driver(doc: dict[str, Any], address: str, check_versions: bool = True) -> int:
    """Hand Serve a validated config as a Ray driver, as `serve deploy` does through
    the dashboard; with `check_versions`, refused when it would change what a deployed
    version name stands for (compared with what the controller says it runs)."""
    from servekit import local

    try:
        with _as_driver(address):
            if check_versions and refuse_changed_versions(doc, _driver_details()):
                return 1
            local.deploy(doc, progress=lambda line: print(line, flush=True))
    except (local.DeployError, instance.InstanceError) as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    except ConnectionError as e:
        print(f"servekit: no Ray instance at {address} ({e})", file=sys.stderr)
        return 1
    print(f"applied to {_shown(address)}")
    return 0


def clear_rollback(model: str, address: str, config: Path) -> int:
    """Tell the application's canary judge to forget `model`'s rollback: every Ingress
    replica gives the canary its weight back at its next sync and watches it afresh."""
    from deployments.canary_sync import NAMESPACE, judge_name

    if _is_dashboard_url(address):
        print("servekit: rollout clear talks to a Ray actor: give the GCS address "
              "(host:6379) or run it on the head node", file=sys.stderr)  # fmt: skip
        return 2
    try:
        # Serve names an application that the file leaves unnamed "default".
        app = str(_servekit_app(yaml.safe_load(config.read_text())).get("name", "default"))
    except (
        OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, IndexError, TypeError,
        AttributeError, StopIteration,
    ) as e:  # fmt: skip
        print(f"servekit: cannot read the application's name from {config} ({e})", file=sys.stderr)
        return 2
    import ray

    # Typed loosely: Ray's annotations make a call to it read as never returning.
    lookup: Callable[..., Any] = ray.get_actor
    try:
        with _as_driver(address):
            try:
                judge = lookup(judge_name(app), namespace=NAMESPACE)
            except ValueError:
                print(f"servekit: {app} has no canary judge (no rollout policy was applied)")
                return 1
            reply: Any = judge.clear.remote(model)
            cleared = int(ray.get(reply, timeout=10))
    except instance.InstanceError as e:
        print(f"servekit: {e}", file=sys.stderr)
        return 1
    except ConnectionError as e:
        print(f"servekit: no Ray instance at {address} ({e})", file=sys.stderr)
        return 1
    if not cleared:
        print(f"servekit: {model} has no canary rollback in force; nothing cleared")
        return 0
    print(f"cleared the canary rollback of {model}: the canary gets its weight back "
          "within a second and is watched afresh")  # fmt: skip
    return 0


def ray_auth_headers() -> dict[str, str]:
    """The Authorization header Ray's dashboard wants when token auth is on.

    The token comes from where Ray itself keeps it: `RAY_AUTH_TOKEN`, the file named
    by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`. It is sent, never printed.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    with urlopen(Request(url, headers=headers or {}), timeout=5) as response:
        return json.loads(response.read())


def _cannot_ask(url: str, space: str, error: Exception) -> None:
    print(f"note: could not ask {url} whether {space} has complete search indexes "
          f"({type(error).__name__}); not checked. Pass --url with servekit's HTTP "
          "address to check.")  # fmt: skip


def search_index_blocker(
    url: str,
    model: str,
    version: str,
    unasked: Callable[[str, str, Exception], None] | None = None,
) -> str | None:
    """Why `model/version` may not take search traffic yet (its index of some catalog
    is incomplete), or None; see `search_index_blockers`."""
    blockers = search_index_blockers(url, model, [version], unasked)
    return blockers[0] if blockers else None


def search_index_blockers(
    url: str,
    model: str,
    versions: list[str],
    unasked: Callable[[str, str, Exception], None] | None = None,
) -> list[str]:
    """Why each of `model`'s `versions` may not take search traffic yet (its index of
    some catalog is incomplete); empty when none is blocked. A model that catalogs do
    not index (an embedding model other than the catalogs', say) blocks nothing: giving
    it traffic changes no search. A service that cannot be asked blocks nothing either;
    `unasked` is told so (the command line prints a note)."""
    from servekit.credentials import operator_headers

    headers = operator_headers()
    try:
        doc = _get(f"{url}/admin/v1/search/indexes", headers)
        blockers = []
        for version in versions:
            blocker = _index_blocker(doc, model, version)
            if blocker is not None and _reloads_at_once(url, headers, model, version):
                blocker = None
            if blocker is not None:
                blockers.append(blocker)
    except (URLError, OSError, ValueError) as e:
        if unasked is not None:
            unasked(url, ", ".join(f"{model}/{v}" for v in versions), e)
        return []
    return blockers


def _reloads_at_once(url: str, headers: dict[str, str], model: str, version: str) -> bool:
    """Whether the store holds a vector of `model/version` for every item of every
    catalog (its index was dropped after it left, but its vectors stay): its index
    then comes back from them in seconds, with nothing embedded, while searches keep to
    the indexes the replicas still hold, so giving it traffic again is no risk. A
    service that does not count them (an older one) says no."""
    space = quote(f"{model}/{version}", safe="")
    try:
        doc = _get(f"{url}/admin/v1/search/indexes?stored={space}", headers)
    except HTTPError:
        return False
    catalogs = doc.get("catalogs") or []
    return all("stored" in c and c["stored"] >= c["items"] for c in catalogs)


def _index_blocker(doc: dict[str, Any], model: str, version: str) -> str | None:
    """`search_index_blockers` for one version, from `/admin/v1/search/indexes`."""
    space = f"{model}/{version}"
    catalogs = doc.get("catalogs") or []
    kept = doc.get("spaces") or []
    # Catalogs keep the spaces of every version of their models that has traffic, a
    # shadow or a canary: a model with none kept is not one catalogs index.
    if not catalogs or not any(s.startswith(f"{model}/") for s in kept):
        return None
    incomplete = [c for c in catalogs if not c["indexes"].get(space, {}).get("complete")]
    if not incomplete:
        return None
    if space not in kept:
        how = (
            "no replica keeps an index of it (it has no traffic, shadow or canary): give "
            "it a shadow or a canary first, so its index is built"
        )
    else:
        how = f"its backfill is running ({doc['pending'].get(space, 0)} items left)"
    return (
        f"{space} has no complete search index for {len(incomplete)} of {len(catalogs)} "
        f"catalogs: {how}; `servekit status` shows the progress"
    )


def status(url: str, address: str, config: Path | None = None) -> int:
    """Print per model: versions, weights, replicas, recent traffic, rollout state;
    and, with `config`, where the file differs from what is deployed."""
    try:
        from servekit.credentials import operator_headers

        auth = operator_headers()
        models = [m["id"] for m in _get(f"{url}/v1/models", auth)["data"]]
        details = [_get(f"{url}/v1/models/{m}", auth) for m in models]
    except (URLError, OSError, ValueError) as e:
        print(f"servekit: cannot reach the service at {url} ({e})", file=sys.stderr)
        return 1
    unreachable = f"no Ray instance reachable at {address}"
    try:
        replicas = _replicas(address)
    except instance.InstanceError as e:
        replicas, unreachable = None, str(e)
    live = _file_live_config(config) if config is not None else None
    if live is not None:
        live = _validated_live_config(live, config)
    for detail in details:
        _print_model(detail, replicas)
        if live is not None:
            differences = drift(live, detail)
            for line in differences:
                print(f"  differs: {line}")
            if differences:
                print(f"  `servekit apply {config}` deploys the file")
    _print_indexes(url, auth)
    if replicas is None:
        print(f"(replica counts unavailable: {unreachable})")
    return 0


def _servekit_app(doc: Any) -> Any:
    """servekit's application in a Serve config (found by its import path, as validation
    and edits find it: a file may hold other applications, before it too)."""
    from configs.validate import IMPORT_PATH

    return next(a for a in doc["applications"] if a.get("import_path") == IMPORT_PATH)


def _file_live_config(path: Path) -> dict[str, Any] | None:
    """The Ingress `user_config` the file declares (None when there is no such file)."""
    try:
        app = _servekit_app(yaml.safe_load(path.read_text()))
        ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
        live: dict[str, Any] = ingress.get("user_config") or {}
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, StopIteration):
        return None
    return live


def _validated_live_config(live: dict[str, Any], path: Path | None) -> dict[str, Any] | None:
    """The file's Ingress `user_config` as servekit reads it (weights as numbers, the
    policies' defaults filled in), for `drift`; None, with a note, when it does not
    validate: `status` then compares nothing rather than failing on a hand edit."""
    from pydantic import ValidationError

    from configs.schema import IngressLiveConfig

    try:
        return IngressLiveConfig.model_validate(live).model_dump()
    except ValidationError:
        print(f"note: the Ingress user_config of {path} does not validate (`servekit "
              f"validate {path}` says why); not compared with what is deployed")  # fmt: skip
        return None


def drift(live: dict[str, Any], detail: dict[str, Any]) -> list[str]:
    """What the file's live config says about one model that the deployed one does not:
    the configured weights, the canary watched, the shadow version and fraction."""
    model = detail["id"]
    out = []
    deployed = {v["name"]: v["configured_weight"] for v in detail["versions"]}
    declared = {str(v): int(w) for v, w in (live.get("traffic") or {}).get(model, {}).items()}
    if {v: w for v, w in declared.items() if w} != {v: w for v, w in deployed.items() if w}:
        out.append(f"weights: the file says {_weights(declared)}; deployed {_weights(deployed)}")
    canary = ((live.get("rollout") or {}).get(model) or {}).get("canary")
    running = (detail.get("rollout") or {}).get("canary")
    if canary != running:
        out.append(f"canary: the file says {canary or 'none'}; deployed {running or 'none'}")
    shadow = (live.get("shadow") or {}).get(model) or {}
    shadowed = detail.get("shadow") or {}
    mine = (shadow.get("version"), shadow.get("fraction"))
    theirs = (shadowed.get("version"), shadowed.get("fraction"))
    if mine != theirs:
        out.append(f"shadow: the file says {_shadow(*mine)}; deployed {_shadow(*theirs)}")
    return out


def _weights(weights: dict[str, int]) -> str:
    return " ".join(f"{v}={w}" for v, w in sorted(weights.items())) or "none"


def _shadow(version: str | None, fraction: float | None) -> str:
    return "none" if version is None else f"{version} at {fraction:.0%}"


def _replicas(address: str) -> dict[str, str] | None:
    if not _is_dashboard_url(address):
        return _replicas_as_driver(address)
    try:
        apps = _get(f"{address}/api/serve/applications/", ray_auth_headers())["applications"]
    except (URLError, OSError, ValueError, KeyError):
        return None
    counts = {}
    for app in apps.values():
        for name, deployment in (app.get("deployments") or {}).items():
            running = sum(1 for r in deployment.get("replicas", []) if r.get("state") == "RUNNING")
            target = deployment.get("target_num_replicas", len(deployment.get("replicas", [])))
            counts[name] = f"{running}/{target}"
    return counts


def _replicas_as_driver(address: str) -> dict[str, str] | None:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    try:
        with _as_driver(address):
            apps = serve.status().applications
    except instance.InstanceError:
        raise
    except (ConnectionError, RuntimeError):
        return None
    counts = {}
    for app in apps.values():
        for name, deployment in app.deployments.items():
            states = deployment.replica_states
            counts[name] = f"{states.get(ReplicaState.RUNNING, 0)}/{sum(states.values())}"
    return counts


def _print_indexes(url: str, auth: dict[str, str]) -> None:
    try:
        doc = _get(f"{url}/admin/v1/search/indexes", auth)
    except (URLError, OSError, ValueError):
        return
    catalogs = doc.get("catalogs") or []
    print(f"search indexes ({len(catalogs)} catalogs, change log at {doc.get('seq', 0)})")
    for space in doc.get("spaces", []):
        pending = doc.get("pending", {}).get(space, 0)
        state = "complete" if pending == 0 else f"backfilling, {pending} items left"
        print(f"  {space:<20}{state}")


def _print_model(detail: dict[str, Any], replicas: dict[str, str] | None) -> None:
    print(f"model {detail['id']}")
    rollout = detail.get("rollout")
    if rollout:
        window = rollout["window"]
        line = (
            f"  rollout: canary {rollout['canary']} {rollout['state']} "
            f"(window {window['requests']} calls, {window['error_rate']:.1%} errors, "
            f"p95 {window['p95_latency_ms']:.0f} ms)"
        )
        if rollout.get("decided_at"):
            at = datetime.fromtimestamp(rollout["decided_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            line += f", at {at} UTC"
        print(line + (f": {rollout['reason']}" if rollout.get("reason") else ""))
    shadow = detail.get("shadow")
    if shadow:
        print(f"  shadow: {shadow['fraction']:.0%} of requests to {shadow['version']}")
        for pair, counts in shadow["pairs"].items():
            print(f"    {pair}: {counts}")
    header = (
        f"  {'version':<12}{'weight':>7}{'config':>7}{'replicas':>10}"
        f"{'req/s':>8}{'errors':>8}{'p95 ms':>9}"
    )
    print(header)
    for v in detail["versions"]:
        recent = v["recent"]
        # An inline version runs in every Ingress replica.
        deployment = "Ingress" if v["deployment"].startswith("Ingress") else v["deployment"]
        print(
            f"  {v['name']:<12}{v['weight']:>7}{v['configured_weight']:>7}"
            f"{(replicas or {}).get(deployment, '?'):>10}{recent['rate_per_s']:>8.2f}"
            f"{recent['error_rate']:>8.1%}{recent['p95_latency_ms']:>9.1f}"
        )
