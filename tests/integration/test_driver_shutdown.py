"""A driver that made deployment handles and stopped its instance with
`servekit.local.shutdown` stays stopped: no handle's report to Serve's controller
starts a new Ray instance afterwards (Ray's auto-connect would, from the handle's
thread, as late as the interpreter's exit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Its own small instance, in its own process: an autoscaling deployment (a handle
# reports its queue only for those, here every 0.2 s), called once through a handle;
# then the instance stops and the driver waits ten report intervals, counting what
# calls ray.init meanwhile.
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray import serve
    from servekit import local

    @serve.deployment(autoscaling_config={
        "min_replicas": 1, "max_replicas": 1,
        "metrics_interval_s": 0.2, "look_back_period_s": 1,
    })
    def echo(text: str) -> str:
        return text

    local.start_ray(num_cpus=2)
    serve.start(proxy_location="Disabled")
    serve.run(echo.bind(), name="driver-app", route_prefix=None)
    handle = serve.get_deployment_handle("echo", app_name="driver-app")
    answer = handle.remote("ping").result(timeout_s=60)
    # Every call of ray.init from here on (auto-connect calls it as ray.init).
    inits = []
    start_ray_again = ray.init
    def counted_init(*args, **kwargs):
        inits.append(time.monotonic())
        return start_ray_again(*args, **kwargs)
    ray.init = counted_init
    local.shutdown(drain_timeout_s=5)
    time.sleep(2.0)
    print(json.dumps({"answer": answer, "initialized": ray.is_initialized(),
                      "inits": len(inits)}))
    sys.stdout.flush()
    """
)


def test_handles_made_by_a_driver_do_not_start_ray_again_after_shutdown() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=180, check=False,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines, out.stdout + out.stderr
    result = json.loads(lines[-1])
    assert result == {"answer": "ping", "initialized": False, "inits": 0}, out.stderr
