"""The output of a local instance's workers on the `servekit serve` console, read from
their files by `servekit serve` itself.

Ray writes each worker's stdout and stderr to `worker-<id>-<job>-<pid>.out|.err` in
the session's log folder; by default its log monitor (a Python process of its own,
about 80 MB) reads them and publishes every line to a driver, which prints it. A
local `servekit serve` keeps no driver once the instance serves (see
`cli._supervise`), so it reads the files itself, in a thread that sleeps between
polls, and the log monitor is stopped (see `local.start_ray`). Each line is printed
as Ray prints it, after the writer's name and pid:
`(ServeReplica:servekit:Ingress pid=1234) warning servekit.access: ...`; the raylet's
error output without one.

Linux and Ray's file layout only; no Ray import.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# A worker's stdout or stderr; the pid is the last field of the name.
WORKER_FILE = re.compile(r"^worker-[0-9a-f]+-[0-9a-f]+-(\d+)\.(?:out|err)$")
# The raylet's own error output (a worker it had to kill, the node out of memory).
RAYLET_FILE = "raylet.err"
# Lines a worker writes for the reader, not for a person: who writes the lines below.
NAME_MARKERS = (":actor_name:", ":task_name:")
HIDDEN_MARKERS = (":job_id:", ":event_summary:")
# A line Ray writes for the driver's console as it is (after this marker).
INFO_MARKER = ":info_message:"
# How often the files are read; a line reaches the console within about this long.
POLL_S = 0.25
# At most this much of one file per poll: a worker printing in a loop cannot hold the
# thread (the rest is read on the next polls).
READ_LIMIT = 1 << 20


@dataclass
class _File:
    """How far one file has been read, and who writes it."""

    pid: str
    offset: int = 0
    pending: bytes = b""
    name: str = ""

    def prefix(self) -> str:
        if not self.pid:
            return ""
        return f"({self.name} pid={self.pid}) " if self.name else f"(pid={self.pid}) "


class WorkerOutput:
    """Prints the new complete lines of the instance's worker files to `sink`, from a
    thread (`start`) or by hand (`poll`). The raylet's lines are held for one poll.
    `stopping` prints what the workers wrote until then (a last line not ended by a
    newline too) and nothing after: what they and the raylet write while the instance
    stops is about the stop itself (each process it sees exit, which the stop signal
    may reach first), not news for whoever stops it; the files keep it. `stop` also
    ends the thread."""

    def __init__(self, logs_dir: Path, sink: TextIO, poll_s: float = POLL_S) -> None:
        self.logs_dir = logs_dir
        self._sink = sink
        self._poll_s = poll_s
        self._files: dict[str, _File] = {}
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._raylet_held: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="worker-output", daemon=True)
        self._thread.start()

    def stopping(self) -> None:
        """The instance is stopping: print what the workers wrote so far, then nothing."""
        with self._lock:
            if self._closed:
                return
            self._raylet_held = []
            workers = [(path, size) for path, size in self._paths() if path.name != RAYLET_FILE]
            self._print([line for path, size in workers for line in self._read(path, size, True)])
            self._closed = True

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stopping()
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopped.wait(self._poll_s):
            self.poll()

    def poll(self) -> None:
        """Print what the files gained since the last poll."""
        with self._lock:
            if self._closed:
                return
            lines, self._raylet_held = self._raylet_held, []
            for path, size in self._paths():
                if path.name == RAYLET_FILE:
                    self._raylet_held = self._read(path, size, False)
                else:
                    lines.extend(self._read(path, size, False))
            self._print(lines)

    def _print(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self._sink.write("".join(line + "\n" for line in lines))
            self._sink.flush()
        except (OSError, ValueError):
            pass  # the console is gone (a closed terminal): the files keep it all

    def _paths(self) -> list[tuple[Path, int]]:
        """The worker files and the raylet's, by name, each with its size: a file that
        did not grow since the last poll is not opened (a poll runs beside the model's
        runs on the same cores, and most polls find nothing new)."""
        found: list[tuple[Path, int]] = []
        try:
            with os.scandir(self.logs_dir) as entries:
                for entry in entries:
                    if entry.name == RAYLET_FILE or WORKER_FILE.match(entry.name):
                        try:
                            found.append((Path(entry.path), entry.stat().st_size))
                        except OSError:
                            continue  # gone since the listing
        except OSError:
            return []
        return sorted(found)

    def _read(self, path: Path, size: int, final: bool) -> list[str]:
        state = self._files.get(path.name)
        if state is None:
            match = WORKER_FILE.match(path.name)
            state = self._files[path.name] = _File(pid=match.group(1) if match else "")
        if size < state.offset:  # truncated: start again
            state.offset, state.pending = 0, b""
        data = b""
        if size > state.offset:
            try:
                with path.open("rb") as f:
                    f.seek(state.offset)
                    data = f.read(READ_LIMIT)
            except OSError:
                return []
        state.offset += len(data)
        data = state.pending + data
        *complete, state.pending = data.split(b"\n")
        if final and state.pending:
            complete.append(state.pending)
            state.pending = b""
        return [
            shown
            for raw in complete
            if (shown := self._line(state, raw.decode(errors="replace").rstrip("\r"))) is not None
        ]

    @staticmethod
    def _line(state: _File, line: str) -> str | None:
        """The console line for one line of a file (None: a marker, or empty)."""
        for marker in NAME_MARKERS:
            if line.startswith(marker):
                state.name = line[len(marker) :]
                return None
        if not line or line.startswith(HIDDEN_MARKERS):
            return None
        if INFO_MARKER in line:
            return line.split(INFO_MARKER, 1)[1]
        return state.prefix() + line
