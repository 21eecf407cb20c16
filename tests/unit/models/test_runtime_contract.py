"""The runtime contract, checked on the real example versions and on a broken runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import (
    ArtifactRef,
    ArtifactStore,
    BatchContractError,
    InvalidInputError,
    Runtime,
    RuntimeNotReadyError,
    RuntimeOptions,
    load_model,
    runtime_for,
)
from models.cpus import intra_op_threads, physical_cores
from models.runtime import CPU_MICRO_BATCH, GPU_MICRO_BATCH, Spinning


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("cache"))


def _ref(example_store: Path, entry: dict[str, Any]) -> ArtifactRef:
    return ArtifactRef(str(example_store / entry["file"]), entry["sha256"])


@pytest.mark.parametrize("version", ["v1", "v2", "v1-torch"])
def test_one_unit_vector_per_input(
    version: str, manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    runtime = load_model(_ref(example_store, manifest[version]), RuntimeOptions(), cache)
    assert runtime.ready
    assert runtime.device_name == "cpu"
    texts = ["first", "the second one is longer than the first", "", "x" * 3000]
    out = runtime.predict_batch(texts)
    assert len(out) == len(texts)
    for vec in out:
        assert vec.dtype == np.float32
        assert vec.shape == (384,)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    assert runtime.predict_batch([]) == []


# How far a text's vector may move with the texts batched beside it, as 1 - cosine:
# fp32 rounding (padding changes the shapes) moves v1's and v2's by about 5e-7 here. v2
# is quantized with scales fixed in the graph (models/build.py); built with dynamic
# quantization, one scale a batch, it moved "hi" by 5e-3 next to "x".
BATCH_DRIFT_MAX = 1e-5


def _drift(got: np.ndarray, want: np.ndarray) -> float:
    """The largest 1 - cosine between matching rows of two sets of unit vectors."""
    return float(1.0 - (np.atleast_2d(got) * np.atleast_2d(want)).sum(axis=1).min())


@pytest.mark.parametrize("version", ["v1", "v2", "v1-torch"])
def test_micro_batches_keep_input_order(
    version: str, manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    ref = _ref(example_store, manifest[version])
    texts = [("word " * n).strip() for n in (40, 1, 17, 3, 90, 2, 8)]
    whole = np.stack(
        load_model(ref, RuntimeOptions(micro_batch_size=64), cache).predict_batch(texts)
    )
    small = np.stack(
        load_model(ref, RuntimeOptions(micro_batch_size=2), cache).predict_batch(texts)
    )
    singles = np.stack(
        [load_model(ref, RuntimeOptions(), cache).predict_batch([t])[0] for t in texts]
    )
    assert _drift(whole, singles) <= BATCH_DRIFT_MAX
    assert _drift(small, singles) <= BATCH_DRIFT_MAX


@pytest.mark.parametrize("version", ["v1", "v2", "v1-torch"])
def test_a_text_embeds_alike_alone_and_in_any_batch(
    version: str,
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
    report: list[str],
) -> None:
    """The embedding cache keeps a text's first vector and an index built in big batches
    is searched with one-text batches: a text's vector must not depend on its batch.
    The texts beside it here are the ones that moved v2's most when it was quantized
    dynamically (1 - cosine up to 1.5e-2 here): a one-letter text, a long non-Latin
    text, one past the token limit."""
    runtime = load_model(_ref(example_store, manifest[version]), RuntimeOptions(), cache)
    texts = [
        "hi",
        "",
        "a red running shoe",
        "Größenverhältnisse, naïve café, 東京の天気は晴れです。" * 8,
        " ".join(f"token{i}" for i in range(600)),
    ]
    alone = np.stack([runtime.predict_batch([t])[0] for t in texts])
    worst = 0.0
    for i, text in enumerate(texts):
        for batch in ([text, "x"], ["x", text], [texts[3], text], [text, texts[4]], texts):
            got = runtime.predict_batch(batch)[batch.index(text)]
            worst = max(worst, _drift(got, alone[i]))
    report.append(f"batch invariance {version}: largest 1 - cosine {worst:.1e}")
    assert worst <= BATCH_DRIFT_MAX


def test_not_loaded_and_bad_inputs(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    artifact = cache.resolve(_ref(example_store, manifest["v2"]))
    runtime = runtime_for(artifact, RuntimeOptions(intra_op_threads=1))
    assert not runtime.ready
    with pytest.raises(RuntimeNotReadyError):
        runtime.predict_batch(["text"])
    runtime.load()
    with pytest.raises(InvalidInputError, match="input 1 is int"):
        runtime.predict_batch(["ok", 5])
    with pytest.raises(InvalidInputError, match="not a single string"):
        runtime.predict_batch("a string is not a batch")


class _DropsOne(Runtime):
    def load(self) -> None:
        self._ready = True

    @property
    def device_name(self) -> str:
        return "cpu"

    def _predict(self, inputs: list[Any]) -> list[Any]:
        return inputs[1:]


def test_wrong_output_count_is_caught(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    artifact = cache.resolve(_ref(example_store, manifest["v2"]))
    runtime = _DropsOne(artifact.path, artifact.meta, RuntimeOptions())
    runtime.load()
    with pytest.raises(BatchContractError, match="1 outputs for 2 inputs"):
        runtime.predict_batch(["a", "b"])


def test_micro_batches_left_at_zero_follow_the_device() -> None:
    assert RuntimeOptions().micro_batch == CPU_MICRO_BATCH == 8
    assert RuntimeOptions(device="gpu").micro_batch == GPU_MICRO_BATCH == 64
    assert RuntimeOptions(micro_batch_size=5, device="gpu").micro_batch == 5


@pytest.mark.parametrize("version", ["v1", "v1-torch"])
def test_a_cpu_runtime_runs_a_batch_in_passes_of_eight(
    version: str, manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    """Twenty texts with `micro_batch_size` left at 0 go through the graph as 8 + 8 + 4,
    the shortest together: each pass pads only to its own longest text."""
    runtime: Any = load_model(_ref(example_store, manifest[version]), RuntimeOptions(), cache)
    passes: list[tuple[int, int]] = []
    forward = runtime._forward

    def counted(input_ids: np.ndarray, mask: np.ndarray, busy: bool = False) -> Any:
        passes.append(input_ids.shape)
        return forward(input_ids, mask, busy)

    runtime._forward = counted
    texts = [("word " * (1 + (i * 7) % 40)).strip() for i in range(20)]
    vectors = runtime.predict_batch(texts)
    assert [rows for rows, _ in passes] == [8, 8, 4]
    assert [width for _, width in passes] == sorted(width for _, width in passes)
    assert len(vectors) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"intra_op_threads": -1}, "thread counts"),
        ({"inter_op_threads": -2}, "thread counts"),
        ({"micro_batch_size": -1}, "micro_batch_size"),
        ({"busy_lanes": 0}, "busy_lanes"),
    ],
)
def test_invalid_options(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuntimeOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spinning", "allow", "stop"),
    [("always", "1", "0"), ("during_run", "1", "1"), ("never", "0", "0")],
)
def test_thread_spinning_reaches_the_onnx_session(
    spinning: Spinning,
    allow: str,
    stop: str,
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
) -> None:
    runtime = load_model(
        _ref(example_store, manifest["v1"]), RuntimeOptions(spinning=spinning), cache
    )
    options = runtime._session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
    assert options.get_session_config_entry("session.force_spinning_stop") == stop


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_busy_lanes_run_a_one_thread_session_with_the_same_results(
    version: str, manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    ref = _ref(example_store, manifest[version])
    runtime: Any = load_model(ref, RuntimeOptions(busy_lanes=2), cache)
    assert runtime.busy_lanes == 2
    assert runtime._busy_session is not runtime._session
    assert runtime._busy_session.get_session_options().intra_op_num_threads == 1
    texts = ["a red running shoe", "blue wool socks for winter", "x"]
    ids = runtime.tokenize(texts)
    solo, solo_tokens = runtime.embed_token_ids(ids)
    busy, busy_tokens = runtime.embed_token_ids(ids, busy=True)
    np.testing.assert_allclose(busy, solo, atol=1e-5)
    assert busy_tokens == solo_tokens


def test_sessions_run_without_a_cpu_memory_arena(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    # An arena would keep the largest batch's activations resident in each session.
    runtime: Any = load_model(
        _ref(example_store, manifest["v1"]), RuntimeOptions(busy_lanes=2), cache
    )
    for session in (runtime._session, runtime._busy_session):
        assert session.get_session_options().enable_cpu_mem_arena is False


def test_one_thread_session_is_its_own_busy_lane(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    ref = _ref(example_store, manifest["v2"])
    runtime: Any = load_model(ref, RuntimeOptions(intra_op_threads=1, busy_lanes=2), cache)
    assert runtime.busy_lanes == 2
    assert runtime._busy_session is runtime._session  # no second copy of the weights
    plain: Any = load_model(ref, RuntimeOptions(), cache)
    assert plain.busy_lanes == 0
    torch_rt: Any = load_model(
        _ref(example_store, manifest["v1-torch"]), RuntimeOptions(busy_lanes=2), cache
    )
    assert torch_rt.busy_lanes == 0  # lanes are an ONNX Runtime CPU feature


def test_a_package_of_another_task_is_refused_by_name(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    """A recommender's package declared as a text-embedding version: a clear error
    naming the task, not the tokenizer's `Is a directory`."""
    from models.artifacts import ResolvedArtifact

    real = cache.resolve(_ref(example_store, manifest["v1"]))
    meta = real.meta.model_copy(update={"task": "recommendation"})
    with pytest.raises(ValueError, match="task is recommendation, not text-embedding"):
        runtime_for(ResolvedArtifact(real.ref, real.path, meta), RuntimeOptions())


def test_a_gpu_version_never_loads_on_the_cpu(
    manifest: dict[str, Any],
    example_store: Path,
    cache: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ONNX Runtime builds a CPU-only session when CUDA cannot start: a `device: gpu`
    version refuses to load then, instead of answering ready from the CPU."""
    import onnxruntime as ort

    built: list[list[str]] = []
    real_session = ort.InferenceSession

    def cpu_only(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        built.append(list(providers or []))
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(RuntimeError, match="could not start its CUDA provider"):
        load_model(_ref(example_store, manifest["v1"]), RuntimeOptions(device="gpu"), cache)
    assert built[0][0] == "CUDAExecutionProvider"


def test_a_session_left_to_choose_its_threads_pins_none_of_them(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    """Left at 0, ONNX Runtime pins each pool thread to one CPU, where a thread cannot
    move to a core that goes idle: the count it would pick is given explicitly."""
    before = set(os.listdir("/proc/self/task"))
    runtime: Any = load_model(_ref(example_store, manifest["v1"]), RuntimeOptions(), cache)
    assert runtime._session.get_session_options().intra_op_num_threads == physical_cores()
    allowed = os.sched_getaffinity(0)
    started = set(os.listdir("/proc/self/task")) - before
    assert len(started) >= physical_cores() - 1  # the pool (the caller runs with it)
    for tid in started:
        assert os.sched_getaffinity(int(tid)) == allowed, tid
    runtime.predict_batch(["a red running shoe"])
    assert intra_op_threads(3) == 3
    assert intra_op_threads(0) == physical_cores()


def test_torch_left_to_choose_its_threads_stays_within_the_cpu_limit(
    manifest: dict[str, Any], example_store: Path, cache: ArtifactStore
) -> None:
    """torch's own default counts the machine's cores whatever the container's limit:
    left at 0, the runtime sets the count `physical_cores` gives (the limit applied)."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(physical_cores() + 3)  # what a large node's default would be
        runtime = load_model(_ref(example_store, manifest["v1-torch"]), RuntimeOptions(), cache)
        assert torch.get_num_threads() == physical_cores()
        load_model(
            _ref(example_store, manifest["v1-torch"]), RuntimeOptions(intra_op_threads=1), cache
        )
        assert torch.get_num_threads() == 1
        assert len(runtime.predict_batch(["a red running shoe"])) == 1
    finally:
        torch.set_num_threads(before)
