"""The runtime contract: `load`, `ready`, `predict_batch(list) -> list`.

A runtime maps a list of inputs to a list of outputs, exactly one output per input,
in order. The contract is checked here, once, for every runtime. Runtimes know
nothing of Ray or HTTP, so they are tested and benchmarked on their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.errors import BatchContractError, InvalidInputError, RuntimeNotReadyError
from models.package import PackageMeta

Device = Literal["cpu", "gpu"]
# How ONNX Runtime's intra-op threads wait for work. "always" (its default): they
# busy-wait between parallel sections and for a while after each run. "during_run":
# they busy-wait only while a run is in progress and sleep once the last concurrent
# run returns, so they never take the CPU the request path needs between runs.
# "never": they sleep at once (each parallel section then pays a wake-up).
Spinning = Literal["always", "during_run", "never"]

# Texts per forward pass when a version leaves `micro_batch_size` at 0. On CPU, small
# passes cut from a batch's texts sorted by length pad each text only to its neighbours'
# length and keep a pass's activations in the cores' caches: batches of 32 texts of 3-20
# words, v1 on two one-thread lanes, 347 texts/s in passes of 64, 485 in passes of 16,
# 526 in passes of 8 (v2 602 / 782 / 865; ~128-token texts 68 / 69 / 71, v2 88 / 100 /
# 114; `bench/raw_runtime.py --micro-batches`, README "Micro-batches on CPU"). A GPU
# wants its passes wide.
CPU_MICRO_BATCH = 8
GPU_MICRO_BATCH = 64


@dataclass(frozen=True)
class RuntimeOptions:
    """How a runtime should run, independent of which model it runs."""

    device: Device = "cpu"
    # 0: one thread per physical core the process may run on, at most its container's
    # CPU limit (models/cpus.py), ONNX Runtime's none pinned (onnx_runtime.py).
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # ONNX Runtime's default; serving uses "during_run" (configs/schema.py).
    spinning: Spinning = "always"
    # Batches run at once when busy, each on one thread (ONNX Runtime on CPU): a
    # second session with one intra-op thread, shared by up to this many runs. A
    # lone batch still gets `intra_op_threads`. 1: one batch at a time.
    busy_lanes: int = 1
    # Largest number of texts run through the graph at once. Inputs are sorted by
    # length and cut into micro-batches of this size, so padding stays small. 0: the
    # device's (`micro_batch`).
    micro_batch_size: int = 0
    # Half precision on GPU (torch runtime). Ignored on CPU.
    gpu_fp16: bool = True
    # Replay CUDA graphs, one per padded batch shape (torch runtime on GPU; see
    # models/cuda_graphs.py). Ignored on CPU.
    gpu_graphs: bool = True

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")
        if self.busy_lanes < 1:
            raise ValueError("busy_lanes must be >= 1")
        if self.micro_batch_size < 0:
            raise ValueError("micro_batch_size must be >= 0")

    @property
    def micro_batch(self) -> int:
        """The micro-batch size in force: `micro_batch_size`, or with 0 the device's."""
        if self.micro_batch_size:
            return self.micro_batch_size
        return GPU_MICRO_BATCH if self.device == "gpu" else CPU_MICRO_BATCH


class Runtime(ABC):
    """Loads one model package and runs batches through it."""

    def __init__(self, package_dir: Path, meta: PackageMeta, options: RuntimeOptions) -> None:
        self.package_dir = package_dir
        self.meta = meta
        self.options = options
        self._ready = False

    @abstractmethod
    def load(self) -> None:
        """Load weights and warm up; afterwards `ready` is true."""

    @property
    def ready(self) -> bool:
        """Whether `predict_batch` may be called."""
        return self._ready

    @property
    @abstractmethod
    def device_name(self) -> str:
        """Where the model actually runs (for example `cpu` or `cuda:0`)."""

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Run a batch; return exactly one output per input, in order."""
        if not self._ready:
            raise RuntimeNotReadyError("runtime is not loaded")
        batch = self._check_inputs(inputs)
        if not batch:
            return []
        outputs = self._predict(batch)
        if len(outputs) != len(batch):
            raise BatchContractError(len(batch), len(outputs))
        return outputs

    def _check_inputs(self, inputs: Sequence[Any]) -> list[Any]:
        return list(inputs)

    @abstractmethod
    def _predict(self, inputs: list[Any]) -> list[Any]:
        """Run a non-empty, validated batch."""


def check_texts(inputs: Sequence[Any]) -> list[str]:
    """Validate a batch of texts; the error names the position, never the content."""
    if isinstance(inputs, str | bytes):
        raise InvalidInputError("inputs must be a list of strings, not a single string")
    texts = list(inputs)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"input {i} is {type(text).__name__}, expected str")
    return texts
