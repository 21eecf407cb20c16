"""`servekit status` says where the file differs from what is deployed."""

from __future__ import annotations

from typing import Any

from servekit.rollout_cli import drift


def _detail(weights: dict[str, int], canary: str | None = None,
            shadow: tuple[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "id": "minilm",
        "versions": [{"name": v, "configured_weight": w} for v, w in weights.items()],
        "rollout": {"canary": canary, "state": "watching"} if canary else None,
        "shadow": {"version": shadow[0], "fraction": shadow[1], "pairs": {}} if shadow else None,
    }


def test_a_file_that_matches_shows_nothing() -> None:
    live = {
        "traffic": {"minilm": {"v1": 90, "v2": 10}},
        "rollout": {"minilm": {"canary": "v2", "max_error_rate": 0.02}},
        "shadow": {"minilm": {"version": "v3", "fraction": 0.1}},
    }
    # A version the file leaves out and the service has at 0 is no difference.
    detail = _detail({"v1": 90, "v2": 10, "v3": 0}, canary="v2", shadow=("v3", 0.1))
    assert drift(live, detail) == []


def test_weights_canary_and_shadow_that_differ_are_named() -> None:
    live = {
        "traffic": {"minilm": {"v1": 80, "v2": 20}},
        "rollout": {"minilm": {"canary": "v2"}},
    }
    detail = _detail({"v1": 100, "v2": 0}, shadow=("v2", 0.5))
    assert drift(live, detail) == [
        "weights: the file says v1=80 v2=20; deployed v1=100 v2=0",
        "canary: the file says v2; deployed none",
        "shadow: the file says none; deployed v2 at 50%",
    ]


def test_the_file_is_read_at_servekits_application_wherever_it_stands(tmp_path: Any) -> None:
    """A Serve config may hold other applications, before servekit's too."""
    import yaml

    from configs.validate import IMPORT_PATH
    from servekit.rollout_cli import _file_live_config

    live = {"traffic": {"minilm": {"v1": 100}}}
    doc = {
        "applications": [
            {"name": "other", "import_path": "other.app:app", "deployments": []},
            {
                "name": "servekit",
                "import_path": IMPORT_PATH,
                "deployments": [{"name": "Ingress", "user_config": live}],
            },
        ]
    }
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert _file_live_config(path) == live


def test_a_file_whose_live_config_does_not_validate_is_not_compared(
    capsys: Any,
) -> None:
    """A hand edit `status` cannot read (a weight that is no number, a policy that is no
    mapping, a fraction in quotes that is no number) failed `drift` with a ValueError or
    AttributeError traceback; it is now a note, and what the service runs still shows."""
    from pathlib import Path

    from servekit.rollout_cli import _validated_live_config

    path = Path("serve_config.yaml")
    for live in (
        {"traffic": {"minilm": {"v1": "ninety", "v2": 10}}},
        {"traffic": {"minilm": {"v1": 100}}, "rollout": {"minilm": "v2"}},
        {"traffic": {"minilm": {"v1": 100}}, "shadow": {"minilm": {"version": "v2",
                                                                   "fraction": "a tenth"}}},
    ):  # fmt: skip
        assert _validated_live_config(live, path) is None
        assert "does not validate" in capsys.readouterr().out
    quoted = {"traffic": {"minilm": {"v1": "80", "v2": 20}},
              "shadow": {"minilm": {"version": "v2", "fraction": "0.5"}}}  # fmt: skip
    read = _validated_live_config(quoted, path)
    assert read is not None
    assert drift(read, _detail({"v1": 80, "v2": 20}, shadow=("v2", 0.5))) == []
