"""The example model's contract: parity with the sentence-transformers library itself.

The reference is `SentenceTransformer(...).encode(..., normalize_embeddings=True)` on
the same packaged weights, computed in the test, not copied numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models import ArtifactRef, ArtifactStore, RuntimeOptions, load_model
from models.build import source_dir

# One padded batch of very different lengths: 1 word to far past the 256-token limit,
# with non-ASCII scripts, emoji and odd whitespace.
TEXTS = [
    "a",
    "",
    "hi",
    "Semantic search over product descriptions.",
    "Größenverhältnisse und Umlaute: äöü ß, naïve café, crème brûlée.",
    "東京の天気は晴れです。明日は雨が降るでしょう。",
    "Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم، هذا اختبار للنص العربي.",
    "emoji 🚀🔥 and symbols ∑∫√ and tabs\tand\nnewlines",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 12),  # ~130 tokens
    " ".join(["Ray Serve replicas batch requests for throughput."] * 40),  # 300+ tokens
    " ".join(f"token{i}" for i in range(600)),  # far past the limit
]


def _cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


@pytest.fixture(scope="module")
def reference() -> npt.NDArray[Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source_dir()), device="cpu")
    assert model.max_seq_length == 256
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True, batch_size=len(TEXTS)))


@pytest.fixture(scope="module")
def outputs(
    manifest: dict[str, Any], example_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, npt.NDArray[Any]]:
    store = ArtifactStore(tmp_path_factory.mktemp("cache"))
    result = {}
    for version in ("v1", "v2", "v1-torch"):
        entry = manifest[version]
        ref = ArtifactRef(str(example_store / entry["file"]), entry["sha256"])
        runtime = load_model(ref, RuntimeOptions(micro_batch_size=len(TEXTS)), store)
        result[version] = np.stack(runtime.predict_batch(TEXTS))
    return result


def test_batch_really_spans_short_and_truncated_texts() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source_dir()))
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert min(lengths) <= 3
    assert max(lengths) > 256


@pytest.mark.parametrize("version", ["v1", "v1-torch"])
def test_fp32_versions_match_sentence_transformers(
    version: str,
    outputs: dict[str, npt.NDArray[Any]],
    reference: npt.NDArray[Any],
    report: list[str],
) -> None:
    cos = _cosines(outputs[version], reference)
    report.append(f"parity {version} vs sentence-transformers: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.9999, f"per-text cosines: {np.round(cos, 6).tolist()}"


def test_int8_version_stays_close_to_fp32(
    outputs: dict[str, npt.NDArray[Any]], report: list[str]
) -> None:
    cos = _cosines(outputs["v2"], outputs["v1"])
    report.append(f"parity v2 (int8) vs v1 (fp32): min cosine {cos.min():.5f}")
    assert cos.min() >= 0.98, f"per-text cosines: {np.round(cos, 5).tolist()}"


@pytest.mark.parametrize("version", ["v1", "v2", "v1-torch"])
def test_each_text_embeds_alike_alone_and_in_the_padded_batch(
    version: str,
    manifest: dict[str, Any],
    example_store: Path,
    outputs: dict[str, npt.NDArray[Any]],
    report: list[str],
) -> None:
    """Batch invariance: every text of the batch (1 token to past the limit) embedded
    alone gives the vector it got in the batch. v2 is quantized with scales fixed at
    build time; with one scale a batch (dynamic quantization), its worst text here was
    at a cosine of 0.988."""
    entry = manifest[version]
    runtime = load_model(
        ArtifactRef(str(example_store / entry["file"]), entry["sha256"]), RuntimeOptions()
    )
    alone = np.stack([runtime.predict_batch([text])[0] for text in TEXTS])
    cos = _cosines(alone, outputs[version])
    report.append(f"batch invariance {version}, padded batch vs alone: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.99999, f"per-text cosines: {np.round(cos, 7).tolist()}"


def test_long_text_is_truncated_not_rejected(
    manifest: dict[str, Any], example_store: Path, outputs: dict[str, npt.NDArray[Any]]
) -> None:
    # The 600-word text embeds exactly like its own first 254 word pieces
    # (256 tokens with [CLS] and [SEP]): truncated, as sentence-transformers does.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source_dir()))
    ids = tok(TEXTS[-1], add_special_tokens=False)["input_ids"]
    assert len(ids) > 256
    cut = tok.decode(ids[:254])
    assert tok(cut, add_special_tokens=False)["input_ids"] == ids[:254]
    entry = manifest["v1"]
    runtime = load_model(
        ArtifactRef(str(example_store / entry["file"]), entry["sha256"]), RuntimeOptions()
    )
    (vec,) = runtime.predict_batch([cut])
    assert float(np.dot(vec, outputs["v1"][-1])) >= 0.9999
