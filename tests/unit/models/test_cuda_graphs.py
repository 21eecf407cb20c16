"""The CUDA graphs' shapes and padding, checked on the CPU: a batch padded up to its
bucket gives the same embeddings as the batch itself. Capture and replay on a GPU are
checked in tests/gpu."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from models.cuda_graphs import ShapeGraphs, buckets, pad_to, row_bucket, width_bucket
from models.text import _pad
from models.torch_runtime import TorchEmbedder


def test_row_buckets_are_powers_of_two_capped_at_the_micro_batch() -> None:
    assert [row_bucket(n, 64) for n in (1, 2, 3, 4, 5, 33, 64)] == [1, 2, 4, 4, 8, 64, 64]
    assert row_bucket(40, 48) == 48
    assert row_bucket(17, 48) == 32
    for bad in (0, 65):
        with pytest.raises(ValueError, match="rows"):
            row_bucket(bad, 64)


def test_width_buckets_step_16_then_64_capped_at_the_model_limit() -> None:
    assert [width_bucket(w, 256) for w in (1, 16, 17, 100, 128, 129, 200, 256)] == [
        16,
        16,
        32,
        112,
        128,
        192,
        256,
        256,
    ]
    assert width_bucket(8, 8) == 8
    assert width_bucket(99, 100) == 100  # a limit off the steps is a bucket itself
    with pytest.raises(ValueError, match="width"):
        width_bucket(257, 256)


def test_every_batch_shape_has_a_bucket_and_the_list_is_largest_first() -> None:
    shapes = buckets(64, 256)
    assert shapes[0] == (64, 256)
    assert len(shapes) == len(set(shapes)) == 7 * 10
    for rows in range(1, 65):
        for width in (1, 15, 16, 64, 130, 256):
            assert (row_bucket(rows, 64), width_bucket(width, 256)) in shapes


def test_pad_to_masks_padding_columns_and_keeps_one_token_in_padding_rows() -> None:
    ids, mask = _pad([[101, 7, 102], [101, 102]])
    pids, pmask = pad_to(ids, mask, 4, 16)
    assert pids.shape == pmask.shape == (4, 16)
    assert pids[:2, :3].tolist() == ids.tolist()
    assert not pids[:, 3:].any()
    assert pmask[:2, :3].tolist() == mask.tolist()
    assert not pmask[:2, 3:].any()
    assert pmask[2:].sum(axis=1).tolist() == [1, 1]
    assert pmask[2:, 0].tolist() == [1, 1]


@pytest.fixture(scope="module")
def torch_cpu(manifest: dict[str, Any], example_store: Path, tmp_path_factory: Any) -> Any:
    entry = manifest["v1-torch"]
    ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
    store = ArtifactStore(tmp_path_factory.mktemp("cache"))
    return load_model(ref, RuntimeOptions(micro_batch_size=8), store)


def test_a_batch_padded_to_its_bucket_embeds_like_the_batch(torch_cpu: Any) -> None:
    import torch

    runtime = torch_cpu
    assert isinstance(runtime, TorchEmbedder)
    assert runtime.cuda_graphs == 0  # on the CPU the model runs eagerly
    texts = ["red running shoes", "a", "the quick brown fox jumps over the lazy dog " * 3]
    ids, mask = _pad(runtime.tokenize(texts))
    rows, width = row_bucket(len(texts), 8), width_bucket(ids.shape[1], 256)
    pids, pmask = pad_to(ids, mask, rows, width)
    assert (rows, width) == (4, 32)
    model = runtime._model
    with torch.inference_mode():
        plain = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        padded = model(torch.from_numpy(pids), torch.from_numpy(pmask)).numpy()
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded[: len(texts)], plain, atol=2e-6)


def test_a_failed_capture_turns_graphs_off_and_the_runtime_answers_eagerly(
    torch_cpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = torch_cpu
    assert isinstance(runtime, TorchEmbedder)
    texts = ["red running shoes", "a", "the quick brown fox jumps over the lazy dog " * 3]
    want = runtime.embed(texts)
    graphs = ShapeGraphs(runtime._model, "cpu", rows_top=8, width_top=256)
    calls: list[tuple[int, int]] = []

    def refuse(rows: int, width: int) -> Any:
        calls.append((rows, width))
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "_capture", refuse)
    monkeypatch.setattr(runtime, "_graphs", graphs)
    ids, mask = _pad(runtime.tokenize(texts))
    assert graphs.run(ids, mask) is None
    assert not graphs.active
    assert graphs.failure == "RuntimeError: operation not permitted when stream is capturing"
    assert runtime.cuda_graphs == 0
    np.testing.assert_allclose(runtime.embed(texts), want, atol=1e-6)
    graphs.prepare()  # stays off: no second attempt, no capture per request
    assert graphs.run(ids, mask) is None
    assert calls == [(4, 32)]


def test_batches_past_the_buckets_run_eagerly_without_a_capture(torch_cpu: Any) -> None:
    graphs = ShapeGraphs(torch_cpu._model, "cpu", rows_top=2, width_top=16)
    ids, mask = _pad(torch_cpu.tokenize(["a", "b", "c"]))
    assert graphs.run(ids, mask) is None  # 3 rows > 2
    ids, mask = _pad(torch_cpu.tokenize(["word " * 40]))
    assert graphs.run(ids, mask) is None  # 42 tokens > 16
    assert graphs.active
    assert graphs.count == 0
