"""promote/rollback edit serve_config.yaml keeping comments and layout."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from servekit.configedit import ConfigFile, EditError, promote, rollback, split_rest
from tests.conftest import REPO_ROOT


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "serve_config.yaml"
    shutil.copy(REPO_ROOT / "serve_config.yaml", path)
    return path


def _traffic(path: Path) -> dict[str, int]:
    doc = yaml.safe_load(path.read_text())
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    weights: dict[str, int] = ingress["user_config"]["traffic"]["minilm"]
    return weights


def test_round_trip_is_byte_identical(config: Path) -> None:
    cfg = ConfigFile.load(config)
    assert cfg.render() == config.read_text()
    assert cfg.diff() == ""


def test_promote_changes_only_the_weights_and_records_them(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    changed = [
        line
        for line in cfg.diff().splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    record = "# last promote: v2, from v1=90 v2=10 to v1=50 v2=50 (for servekit rollback)"
    assert [" ".join(line.split()) for line in changed] == [
        "- minilm:",
        "- v1: 90",
        "- v2: 10",
        f"+ minilm: {record}",
        "+ v1: 50",
        "+ v2: 50",
    ]
    assert "# Traffic weights per model" in cfg.render()


@pytest.mark.parametrize(
    ("current", "version", "weight", "expected"),
    [
        ({"v1": 90, "v2": 10}, "v2", 20, {"v1": 80, "v2": 20}),
        ({"v1": 90, "v2": 10}, "v2", 100, {"v1": 0, "v2": 100}),
        ({"a": 50, "b": 30, "c": 20}, "c", 40, {"a": 38, "b": 22, "c": 40}),
        ({"a": 100, "b": 0}, "a", 60, {"a": 60, "b": 40}),
        ({"a": 60, "b": 40, "c": 0}, "c", 5, {"a": 57, "b": 38, "c": 5}),
    ],
)
def test_split_rest(
    current: dict[str, int], version: str, weight: int, expected: dict[str, int]
) -> None:
    result = split_rest(current, version, weight)
    assert result == expected
    assert sum(result.values()) == 100


def test_lowering_the_only_version_with_traffic_needs_to_know_who_takes_the_rest() -> None:
    """v1 at 100 beside v2 and v3 at 0 (retired, or not yet rolled out): lowering v1
    gave the rest to whichever was declared first; which one takes it is the
    operator's call, as a rollback's primary is. With one other version it is plain."""
    with pytest.raises(EditError, match=r"the other 60% \(v2, v3 are at 0\)"):
        split_rest({"v1": 100, "v2": 0, "v3": 0}, "v1", 40)
    assert split_rest({"v1": 100, "v2": 0}, "v1", 40) == {"v1": 40, "v2": 60}
    assert split_rest({"v1": 100, "v2": 0, "v3": 0}, "v1", 100) == {"v1": 100, "v2": 0, "v3": 0}


def test_rollback_to_primary_and_errors(config: Path) -> None:
    cfg = ConfigFile.load(config)
    assert rollback(cfg, "minilm", None)[-1] == "all traffic of minilm goes to v1"
    promote(cfg, "minilm", "v2", 50)
    assert rollback(cfg, "minilm", "v2")[-1] == "all traffic of minilm goes to v2"
    with pytest.raises(EditError, match="not declared"):
        promote(cfg, "nope", "v1", 10)
    with pytest.raises(EditError, match=r"outside 0\.\.100"):
        promote(cfg, "minilm", "v1", 120)


def _model_line(cfg: ConfigFile) -> str:
    """The `minilm:` line under the ingress's traffic."""
    lines = cfg.render().split("\n          traffic:\n", 1)[1].splitlines()
    return next(line for line in lines if line.strip().startswith("minilm:"))


def _weights(cfg: ConfigFile) -> dict[str, int]:
    return {v: int(w) for v, w in cfg.traffic("minilm").items()}


def test_rollback_undoes_the_last_promotion(config: Path) -> None:
    original = ConfigFile.load(config).render()
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    assert _model_line(cfg).strip() == (
        "minilm:  # last promote: v2, from v1=90 v2=10 to v1=50 v2=50 (for servekit rollback)"
    )
    config.write_text(cfg.render())

    cfg = ConfigFile.load(config)  # the record is read back from the file
    assert rollback(cfg, "minilm", None) == [
        "undid the last promotion of minilm v2: weights back to v1=90 v2=10"
    ]
    assert _weights(cfg) == {"v1": 90, "v2": 10}
    assert cfg.render() == original  # the record is gone with the promotion


def test_steps_of_one_version_are_one_rollout(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 20)
    promote(cfg, "minilm", "v2", 50)
    promote(cfg, "minilm", "v2", 80)
    rollback(cfg, "minilm", None)
    assert _weights(cfg) == {"v1": 90, "v2": 10}
    # Another version's promotion starts a new rollout.
    promote(cfg, "minilm", "v2", 50)
    promote(cfg, "minilm", "v1", 100)
    rollback(cfg, "minilm", None)
    assert _weights(cfg) == {"v1": 50, "v2": 50}


def test_promoting_back_to_the_start_leaves_no_record(config: Path) -> None:
    original = ConfigFile.load(config).render()
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    promote(cfg, "minilm", "v2", 10)
    assert cfg.last_promotion("minilm") is None
    assert cfg.render() == original


def test_rollback_after_a_hand_edit_sends_all_to_the_primary(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    cfg.traffic("minilm")["v1"], cfg.traffic("minilm")["v2"] = 70, 30  # edited by hand
    notes = rollback(cfg, "minilm", None)
    assert notes == [
        "the last promotion recorded (v2, to v1=50 v2=50) is not what the file says now "
        "(v1=70 v2=30): it was edited since",
        "all traffic of minilm goes to v1",
    ]
    assert _weights(cfg) == {"v1": 100, "v2": 0}
    assert cfg.last_promotion("minilm") is None


def test_rollback_without_a_usable_record_says_why_it_needs_to(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 30)
    cfg.traffic("minilm")["v1"], cfg.traffic("minilm")["v2"] = 50, 50
    with pytest.raises(
        EditError,
        match=r"no single primary version \(v1 and v2 tie at 50\); say which with --to \(the",
    ):
        rollback(cfg, "minilm", None)
    cfg = ConfigFile.load(config)
    cfg.traffic("minilm")["v1"], cfg.traffic("minilm")["v2"] = 50, 50
    with pytest.raises(EditError, match="no promotion of minilm is recorded in the file"):
        rollback(cfg, "minilm", None)


def _three_versions(cfg: ConfigFile, weights: dict[str, int], canary: str | None) -> None:
    """minilm with a v3 beside v1 and v2 (the same artifact), these weights, and a
    canary watch on `canary`."""
    versions = cfg.app()["args"]["models"]["minilm"]["versions"]
    versions["v3"] = copy.deepcopy(versions["v2"])
    traffic = cfg.traffic("minilm")
    for version, weight in weights.items():
        traffic[version] = weight
    if canary is not None:
        cfg.ingress_live()["rollout"] = {"minilm": {"canary": canary}}


@pytest.mark.parametrize("canary", [None, "v3"])
def test_rollback_to_the_primary_refuses_a_tie_with_or_without_a_canary(
    config: Path, canary: str | None
) -> None:
    """v1 and v2 tie as the heaviest versions that are not the canary: no version is the
    primary, whether a canary is watched or not; nothing is changed."""
    cfg = ConfigFile.load(config)
    _three_versions(cfg, {"v1": 45, "v2": 45, "v3": 10}, canary)
    with pytest.raises(EditError, match=r"no single primary version \(v1 and v2 tie at 45\)"):
        rollback(cfg, "minilm", None)
    assert {v: int(w) for v, w in cfg.traffic("minilm").items()} == {"v1": 45, "v2": 45, "v3": 10}
    # Named with --to, it goes through.
    assert rollback(cfg, "minilm", "v2")[0] == "all traffic of minilm goes to v2"


def test_rollback_to_the_primary_skips_the_canary_even_when_it_is_heaviest(config: Path) -> None:
    cfg = ConfigFile.load(config)
    _three_versions(cfg, {"v1": 30, "v2": 20, "v3": 50}, "v3")
    assert rollback(cfg, "minilm", None)[-1] == "all traffic of minilm goes to v1"
    # The canary ties with the primary: no tie among the others, no refusal.
    cfg = ConfigFile.load(config)
    _three_versions(cfg, {"v1": 40, "v2": 20, "v3": 40}, "v3")
    assert rollback(cfg, "minilm", None)[-1] == "all traffic of minilm goes to v1"


def test_cli_rollback_exits_2_on_a_tie_with_a_canary(config: Path) -> None:
    cfg = ConfigFile.load(config)
    _three_versions(cfg, {"v1": 45, "v2": 45, "v3": 10}, "v3")
    config.write_text(cfg.render())
    before = config.read_text()
    out = _cli("rollback", "minilm", "--config", str(config), "--no-apply")
    assert out.returncode == 2, out
    assert "no single primary version (v1 and v2 tie at 45); say which with --to" in out.stderr
    assert config.read_text() == before


def test_rollback_to_a_named_version_drops_the_record(config: Path) -> None:
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 50)
    assert rollback(cfg, "minilm", "v2") == ["all traffic of minilm goes to v2"]
    assert _weights(cfg) == {"v1": 0, "v2": 100}
    assert cfg.last_promotion("minilm") is None
    assert "last promote" not in cfg.render()


def _with_canary_watch(config: Path) -> None:
    text = config.read_text()
    anchor = "          traffic:\n"
    assert anchor in text
    policy = "          rollout:\n            minilm: {canary: v2, max_error_rate: 0.05}\n"
    config.write_text(text.replace(anchor, policy + anchor, 1))


def _live(cfg: ConfigFile) -> dict[str, object]:
    doc = yaml.safe_load(cfg.render())
    ingress = next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Ingress")
    live: dict[str, object] = ingress["user_config"]
    return live


def test_the_canary_taking_everything_ends_its_watch_either_way(config: Path) -> None:
    _with_canary_watch(config)
    cfg = ConfigFile.load(config)
    assert _live(cfg)["rollout"] == {"minilm": {"canary": "v2", "max_error_rate": 0.05}}
    assert promote(cfg, "minilm", "v2", 100) == [
        "v2 now takes all traffic: its canary watch is removed"
    ]
    assert "rollout" not in _live(cfg)  # no empty `rollout: {}` left behind
    cfg = ConfigFile.load(config)
    assert rollback(cfg, "minilm", "v2") == [
        "all traffic of minilm goes to v2",
        "v2 now takes all traffic: its canary watch is removed",
    ]
    assert "rollout" not in _live(cfg)
    # The other version promoted to 0 hands the canary everything too.
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v1", 0) == [
        "v2 now takes all traffic: its canary watch is removed"
    ]
    assert _weights(cfg) == {"v1": 0, "v2": 100}
    assert "rollout" not in _live(cfg)
    cfg = ConfigFile.load(config)  # to the primary: the watch stays
    assert rollback(cfg, "minilm", "v1")[-1] == "all traffic of minilm goes to v1"
    assert "rollout" in _live(cfg)
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v2", 0) == []
    assert "rollout" in _live(cfg)


def test_the_record_keeps_a_comment_already_on_the_line(config: Path) -> None:
    text = config.read_text()
    ingress_model = "          traffic:\n            minilm:\n"
    assert ingress_model in text
    config.write_text(
        text.replace(ingress_model, "          traffic:\n            minilm:   # the embedder\n")
    )
    commented = ConfigFile.load(config).render()
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 40)
    assert _model_line(cfg).strip() == (
        "minilm:   # the embedder  # last promote: v2, from v1=90 v2=10 to v1=60 v2=40 "
        "(for servekit rollback)"
    )
    config.write_text(cfg.render())
    cfg = ConfigFile.load(config)
    rollback(cfg, "minilm", None)
    assert cfg.render() == commented


@pytest.mark.parametrize("eol", ["", "   # all of it"])
def test_a_version_new_to_the_last_model_is_written_under_its_mapping(
    config: Path, eol: str
) -> None:
    """The shipped file's last model under `traffic` (the recommender) is followed by the
    batching section's comment, which ruamel keeps on that model's last entry: a version
    promoted that had no weight line yet was written below that comment, six lines away
    from its model."""
    text = config.read_text()
    declared = "              runtime: onnx\n      limits:"
    weights = "            recommender:               # split, shadow and canary like any model\n"
    assert text.count(declared) == 1
    assert weights + "              v1: 100\n" in text
    config.write_text(
        text.replace(
            declared,
            "              runtime: onnx\n            v2:\n              artifact:\n"
            "                uri: artifacts/recommender/v1.tar\n                sha256: "
            "570f43e90d92bf2107d0c7ba448ba040013ac0ff57fe58b71284a496985e8826\n"
            "              runtime: onnx\n      limits:",
        ).replace(weights + "              v1: 100\n", f"{weights}              v1: 100{eol}\n")
    )
    cfg = ConfigFile.load(config)
    promote(cfg, "recommender", "v2", 5)
    lines = cfg.render().splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("            recommender:"))
    assert lines[at + 1].startswith("              v1: 95")
    assert lines[at + 1].endswith(eol)
    assert lines[at + 2] == "              v2: 5"
    assert lines[at + 3].startswith("          # Batching of inline versions")
    doc = yaml.safe_load(cfg.render())
    assert doc["applications"][0]["deployments"][0]["user_config"]["traffic"]["recommender"] == {
        "v1": 95,
        "v2": 5,
    }
    config.write_text(cfg.render())
    cfg = ConfigFile.load(config)
    rollback(cfg, "recommender", None)
    assert (
        "              v1: 100" + eol + "\n              v2: 0\n          # Batching"
        in cfg.render()
    )


def _comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


@pytest.mark.parametrize(
    "policy",
    [
        "          rollout:\n            minilm:\n              canary: v2\n"
        "              max_error_rate: 0.05\n",
        "          rollout:\n            minilm:\n              canary: v2\n"
        "            recommender:\n              canary: v1\n",
        "          rollout:\n            recommender:\n              canary: v1\n"
        "            minilm:\n              canary: v2\n",
    ],
)
@pytest.mark.parametrize("ended_by", ["promote", "rollback --to"])
def test_ending_a_watch_keeps_the_comments_that_follow_it(
    config: Path, policy: str, ended_by: str
) -> None:
    """A block-style policy written above the shipped file's commented-out `shadow` and
    `rollout` examples (where the runbook's step 3 adds it) holds those comment lines
    in ruamel: removing the watch (promote to 100, rollback --to the canary) deleted
    six lines of comments with it."""
    text = config.read_text()
    anchor = "          # Optional, also live:\n"
    assert text.count(anchor) == 1
    config.write_text(text.replace(anchor, policy + anchor))
    cfg = ConfigFile.load(config)
    if ended_by == "promote":
        promote(cfg, "minilm", "v2", 100)
    else:
        rollback(cfg, "minilm", "v2")
    rendered = cfg.render()
    assert _comments(rendered) == _comments(text)
    assert "              canary: v2\n" not in rendered
    rollout = _live(cfg).get("rollout")
    assert rollout == ({"recommender": {"canary": "v1"}} if "recommender" in policy else None)
    assert (anchor + "          # shadow:") in rendered  # where it was, as it was


def test_ending_a_watch_written_first_keeps_the_comment_above_what_follows(
    config: Path,
) -> None:
    text = config.read_text()
    anchor = "        user_config:\n          traffic:\n"
    assert text.count(anchor) == 1
    config.write_text(
        text.replace(
            anchor,
            "        user_config:\n          rollout:\n            minilm:\n"
            "              canary: v2\n          # the split, in percent:\n          traffic:\n",
        )
    )
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 100)
    assert "        user_config:\n          # the split, in percent:\n          traffic:\n" in (
        cfg.render()
    )
    assert "rollout" not in _live(cfg)


SHADOW_ANCHOR = "          # Optional, also live:\n"


def _with_shadow(config: Path, shadow: str) -> str:
    """The shipped file with `shadow` written above its commented-out `shadow` and
    `rollout` examples (where the runbook's step 2 adds one); the text before."""
    text = config.read_text()
    assert text.count(SHADOW_ANCHOR) == 1
    config.write_text(text.replace(SHADOW_ANCHOR, shadow + SHADOW_ANCHOR))
    return text


SHADOW_BLOCK = (
    "          shadow:\n            minilm:\n"
    "              version: v2\n              fraction: 0.1\n"
)
SHADOW_FLOW = "          shadow:\n            minilm: {version: v2, fraction: 0.1}\n"
SHADOW_NOTE = "v2 takes all traffic: the shadow mirroring 10% of its requests to it is removed"


@pytest.mark.parametrize("shadow", [SHADOW_BLOCK, SHADOW_FLOW], ids=["block", "flow"])
def test_promoting_the_shadowed_version_to_all_traffic_removes_the_shadow(
    config: Path, shadow: str
) -> None:
    """Mirroring requests to the version that answers all of them does nothing useful:
    the promotion removes the shadow (and the emptied `shadow:`), keeping every comment
    where it was, and says so."""
    text = _with_shadow(config, shadow)
    cfg = ConfigFile.load(config)
    assert _live(cfg)["shadow"] == {"minilm": {"version": "v2", "fraction": 0.1}}
    assert promote(cfg, "minilm", "v2", 100) == [SHADOW_NOTE]
    rendered = cfg.render()
    assert "shadow" not in _live(cfg)
    assert _comments(rendered) == _comments(text)
    assert (SHADOW_ANCHOR + "          # shadow:") in rendered
    # The file as promoting it without a shadow leaves it: nothing else moved.
    config.write_text(text)
    bare = ConfigFile.load(config)
    promote(bare, "minilm", "v2", 100)
    assert rendered == bare.render()


def test_a_shadow_of_another_version_or_model_stays(config: Path) -> None:
    _with_shadow(
        config,
        "          shadow:\n            minilm: {version: v2, fraction: 0.1}\n"
        "            recommender: {version: v1, fraction: 0.5}\n",
    )
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v2", 50) == []  # not all of it: still a candidate
    assert promote(cfg, "minilm", "v1", 100) == []  # the shadow mirrors to v2, not v1
    assert promote(cfg, "minilm", "v2", 100) == [SHADOW_NOTE]
    assert _live(cfg)["shadow"] == {"recommender": {"version": "v1", "fraction": 0.5}}


def test_the_shadowed_version_left_with_all_traffic_loses_its_shadow_however_it_got_it(
    config: Path,
) -> None:
    _with_shadow(config, SHADOW_FLOW)
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v1", 0) == [SHADOW_NOTE]  # v2 takes the rest: all
    assert _weights(cfg) == {"v1": 0, "v2": 100}
    assert "shadow" not in _live(cfg)
    cfg = ConfigFile.load(config)
    assert rollback(cfg, "minilm", "v2") == [
        "all traffic of minilm goes to v2",
        SHADOW_NOTE,
    ]
    assert "shadow" not in _live(cfg)
    cfg = ConfigFile.load(config)  # to the primary: the shadow stays
    assert rollback(cfg, "minilm", "v1") == ["all traffic of minilm goes to v1"]
    assert _live(cfg)["shadow"] == {"minilm": {"version": "v2", "fraction": 0.1}}


def test_undoing_a_promotion_to_all_traffic_does_not_bring_the_shadow_back(
    config: Path,
) -> None:
    """The runbook's order: a shadow on v2 before it has traffic, then v2 promoted."""
    text = config.read_text()
    weights = "            minilm:\n              v1: 90\n              v2: 10\n"
    assert text.count(weights) == 1
    config.write_text(text.replace(weights, "            minilm:\n              v1: 100\n"))
    _with_shadow(config, SHADOW_FLOW)
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v2", 100) == [SHADOW_NOTE]
    config.write_text(cfg.render())
    cfg = ConfigFile.load(config)
    assert rollback(cfg, "minilm", None) == [
        "undid the last promotion of minilm v2: weights back to v1=100 v2=0"
    ]
    assert "shadow" not in _live(cfg)
    # An undo that leaves all the traffic to the version a shadow mirrors to removes it.
    config.write_text(
        cfg.render().replace(SHADOW_ANCHOR, SHADOW_FLOW.replace("v2", "v1") + SHADOW_ANCHOR)
    )
    cfg = ConfigFile.load(config)
    promote(cfg, "minilm", "v2", 30)
    assert rollback(cfg, "minilm", None) == [
        "undid the last promotion of minilm v2: weights back to v1=100 v2=0",
        "v1 takes all traffic: the shadow mirroring 10% of its requests to it is removed",
    ]
    assert "shadow" not in _live(cfg)


def test_a_canary_watch_and_a_shadow_of_the_promoted_version_both_go(config: Path) -> None:
    text = _with_shadow(
        config,
        SHADOW_FLOW + "          rollout:\n            minilm:\n              canary: v2\n",
    )
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v2", 100) == [
        "v2 now takes all traffic: its canary watch is removed",
        SHADOW_NOTE,
    ]
    assert "shadow" not in _live(cfg)
    assert "rollout" not in _live(cfg)
    assert _comments(cfg.render()) == _comments(text)
    # Nothing left but the weights changed (and the record of the promotion).
    config.write_text(text)
    bare = ConfigFile.load(config)
    promote(bare, "minilm", "v2", 100)
    assert cfg.render() == bare.render()


def test_a_shadow_written_first_keeps_the_comment_above_what_follows(config: Path) -> None:
    text = config.read_text()
    anchor = "        user_config:\n          traffic:\n"
    assert text.count(anchor) == 1
    config.write_text(
        text.replace(
            anchor,
            "        user_config:\n          shadow:\n            minilm: {version: v2, "
            "fraction: 0.25}\n          # the split, in percent:\n          traffic:\n",
        )
    )
    cfg = ConfigFile.load(config)
    assert promote(cfg, "minilm", "v2", 100) == [
        "v2 takes all traffic: the shadow mirroring 25% of its requests to it is removed"
    ]
    assert "        user_config:\n          # the split, in percent:\n          traffic:\n" in (
        cfg.render()
    )
    assert "shadow" not in _live(cfg)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit", *args], capture_output=True, text=True, check=False
    )


def test_cli_dry_run_writes_nothing(config: Path, example_store: Path) -> None:
    before = config.read_text()
    out = _cli("promote", "minilm", "v2", "--weight", "25", "--config", str(config), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "+              v2: 25" in out.stdout
    assert "dry run" in out.stdout
    assert config.read_text() == before


def test_cli_writes_without_applying(config: Path, example_store: Path) -> None:
    out = _cli("promote", "minilm", "v2", "--weight", "30", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert _traffic(config) == {"v1": 70, "v2": 30}
    out = _cli("rollback", "minilm", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert "note: undid the last promotion of minilm v2: weights back to v1=90 v2=10" in out.stdout
    assert _traffic(config) == {"v1": 90, "v2": 10}
    out = _cli("rollback", "minilm", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert "no promotion of minilm is recorded in the file" in out.stdout
    assert _traffic(config) == {"v1": 100, "v2": 0}


def test_cli_applies_what_the_file_already_says(config: Path, example_store: Path) -> None:
    """Written with --no-apply, then the same promote: the file already says so, but
    the service may not, so it is applied (here to a dashboard nobody runs: refused)."""
    out = _cli("promote", "minilm", "v2", "--weight", "20", "--config", str(config), "--no-apply")
    assert out.returncode == 0, out.stderr
    assert f"not applied: `servekit apply {config}` deploys it" in out.stdout
    out = _cli("promote", "minilm", "v2", "--weight", "20", "--config", str(config),
               "--address", "http://127.0.0.1:9")  # fmt: skip
    assert "already says so; applying it" in out.stdout
    assert out.returncode == 1
    assert "serve deploy to http://127.0.0.1:9 failed" in out.stderr
    # A dry run of the same stays a no-op.
    out = _cli("promote", "minilm", "v2", "--weight", "20", "--config", str(config), "--dry-run")
    assert (out.returncode, "nothing to change" in out.stdout) == (0, True)


def test_cli_mistakes_exit_non_zero(config: Path) -> None:
    bad_version = _cli("promote", "minilm", "v7", "--weight", "5", "--config", str(config))
    assert bad_version.returncode == 2
    assert "no version 'v7'" in bad_version.stderr
    missing = _cli("rollback", "minilm", "--config", str(config.with_name("nope.yaml")))
    assert missing.returncode == 2
    no_weight = _cli("promote", "minilm", "v2", "--config", str(config))
    assert no_weight.returncode == 2
    assert "--weight" in no_weight.stderr
