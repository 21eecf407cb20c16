"""The workers' output on a quiet `servekit serve` console, read from Ray's files."""

from __future__ import annotations

import io
import time
from pathlib import Path

from servekit.worker_output import WorkerOutput

INGRESS = "worker-cf1af971d2cd-01000000-19876.err"
CONTROLLER = "worker-beafd7bc85a2-ffffffff-19757.out"


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_lines_carry_the_writers_name_and_pid_and_markers_stay_hidden(tmp_path: Path) -> None:
    console = io.StringIO()
    output = WorkerOutput(tmp_path, console)
    _append(tmp_path / INGRESS, ":job_id:01000000\n:actor_name:ServeReplica:servekit:Ingress\n")
    _append(tmp_path / CONTROLLER, ":job_id:01000000\n:actor_name:ServeController\nplain\n")
    _append(tmp_path / "worker-aa-01000000-7.err", "before any name\n")
    _append(tmp_path / "python-core-worker-aa_7.log", "Ray's own log: not the console's\n")
    output.poll()
    _append(tmp_path / INGRESS, "warning servekit.access: é\n\n:info_message:as it is\n")
    output.poll()
    assert console.getvalue().splitlines() == [
        "(pid=7) before any name",
        "(ServeController pid=19757) plain",
        "(ServeReplica:servekit:Ingress pid=19876) warning servekit.access: é",
        "as it is",
    ]


def test_a_line_is_printed_once_complete_or_at_the_stop(tmp_path: Path) -> None:
    console = io.StringIO()
    output = WorkerOutput(tmp_path, console)
    _append(tmp_path / INGRESS, ":actor_name:A\nhalf")
    output.poll()
    assert console.getvalue() == ""
    _append(tmp_path / INGRESS, " a line\nlast words")
    output.poll()
    assert console.getvalue() == "(A pid=19876) half a line\n"
    output.stop()
    assert console.getvalue().splitlines()[-1] == "(A pid=19876) last words"


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    console = io.StringIO()
    output = WorkerOutput(tmp_path, console)
    _append(tmp_path / INGRESS, "one long first line\n")
    output.poll()
    (tmp_path / INGRESS).write_text("two\n")
    output.poll()
    assert console.getvalue().splitlines() == ["(pid=19876) one long first line", "(pid=19876) two"]


def test_the_raylets_lines_wait_a_poll_and_nothing_is_printed_once_stopping(
    tmp_path: Path,
) -> None:
    console = io.StringIO()
    output = WorkerOutput(tmp_path, console)
    _append(tmp_path / "raylet.err", "a worker was killed\n")
    output.poll()
    assert console.getvalue() == ""
    output.poll()
    assert console.getvalue() == "a worker was killed\n"
    # What it writes as the stop reaches its agents is about the stop itself.
    _append(tmp_path / "raylet.err", "The raylet exited immediately because one Ray agent failed\n")
    _append(tmp_path / INGRESS, "written before the stop\n")
    output.poll()
    output.stopping()
    _append(tmp_path / INGRESS, "RuntimeError: Failed to send socket command\n")
    output.poll()
    output.stop()
    assert console.getvalue().splitlines() == [
        "a worker was killed",
        "(pid=19876) written before the stop",
    ]


def test_the_thread_prints_while_running_and_a_closed_console_loses_nothing_else(
    tmp_path: Path,
) -> None:
    console = io.StringIO()
    output = WorkerOutput(tmp_path, console, poll_s=0.01)
    output.start()
    _append(tmp_path / INGRESS, "live\n")
    deadline = time.monotonic() + 5
    while "live" not in console.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert console.getvalue() == "(pid=19876) live\n"
    console.close()
    _append(tmp_path / INGRESS, "after the terminal went away\n")
    output.stop()  # no exception: the file keeps the line


def test_a_missing_folder_prints_nothing(tmp_path: Path) -> None:
    console = io.StringIO()
    WorkerOutput(tmp_path / "gone", console).poll()
    assert console.getvalue() == ""
