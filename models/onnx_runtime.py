"""ONNX Runtime text embedder: CPU provider, CUDA provider on GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.cpus import intra_op_threads
from models.text import Float32Array, Int64Array, TextEmbedder


class OnnxEmbedder(TextEmbedder):
    """Runs an exported sentence-embedding graph with ONNX Runtime."""

    _session: Any = None
    _busy_session: Any = None
    _providers: tuple[str, ...] = ()

    def load(self) -> None:
        """Create the inference session (and, with `busy_lanes` > 1 on CPU, a one-thread
        session for concurrent busy runs), then run one warm-up batch through each."""
        import onnxruntime as ort

        self._load_tokenizer()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Given explicitly even when left to choose: left at 0, ONNX Runtime also pins
        # each of its pool's threads to one CPU, and a pinned thread cannot move to a
        # core that goes idle: on two cores, whenever the thread that calls the run (the
        # replica's event loop, free to run anywhere) was on the pinned thread's CPU, the
        # two shared that CPU while the other idled, the caller spinning at a barrier for
        # the thread it displaced (1-3 ms a time; 47 times in 4 s at one connection
        # through a dedicated version, the other CPU idle in 46 of them, `perf sched`;
        # README, "The dedicated placement's hop").
        opts.intra_op_num_threads = intra_op_threads(self.options.intra_op_threads)
        opts.inter_op_num_threads = self.options.inter_op_threads
        opts.log_severity_level = 3
        # No CPU memory arena: an arena keeps the largest batch's activations for good
        # (one per session, so three on the shipped inline versions); without it they
        # go back to the allocator after each run. Batches up to 128 texts through
        # v1's two sessions and v2 left 109 MB resident with arenas, 33 MB without,
        # at the same throughput (see the README's Performance section).
        opts.enable_cpu_mem_arena = False
        spin = "0" if self.options.spinning == "never" else "1"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        stop = "1" if self.options.spinning == "during_run" else "0"
        opts.add_session_config_entry("session.force_spinning_stop", stop)
        providers = ["CPUExecutionProvider"]
        if self.options.device == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "device gpu asked for, but this onnxruntime build has no CUDA provider"
                )
            providers.insert(0, "CUDAExecutionProvider")
        path = str(self.package_dir / self.meta.model_file)
        self._session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self._providers = tuple(self._session.get_providers())
        if self.options.device == "gpu":
            # ONNX Runtime builds a CPU-only session when CUDA cannot start (cuDNN or
            # cuBLAS missing, no free device) and, by default, moves a session whose run
            # failed on CUDA to the CPU: a GPU version would then answer from the CPU,
            # ready and slow. Refuse to load instead, and never fall back.
            if self._providers[:1] != ("CUDAExecutionProvider",):
                raise RuntimeError(
                    "device gpu asked for, but ONNX Runtime could not start its CUDA "
                    f"provider (session providers: {', '.join(self._providers)}; its log says why)"
                )
            self._session.disable_fallback()
        if self.options.busy_lanes > 1 and self.device_name == "cpu":
            # One thread per run: concurrent runs never meet at a barrier waiting for a
            # thread that lost its core, which is what two-thread runs do under load.
            # A one-thread session already is one (no second copy of the weights).
            self._busy_session = self._session
            if self.options.intra_op_threads != 1:
                opts.intra_op_num_threads = 1
                self._busy_session = ort.InferenceSession(path, opts, providers=providers)
        self._ready = True
        self.predict_batch(["warm up"])
        if self._busy_session not in (None, self._session):
            self.embed_token_ids(self.tokenize(["warm up"]), busy=True)

    @property
    def busy_lanes(self) -> int:
        """`busy_lanes` from the options when the one-thread session exists, else 0."""
        return self.options.busy_lanes if self._busy_session is not None else 0

    @property
    def device_name(self) -> str:
        """`cuda` when the CUDA provider is active, otherwise `cpu`."""
        return "cuda" if self._providers[:1] == ("CUDAExecutionProvider",) else "cpu"

    def _forward(
        self, input_ids: Int64Array, attention_mask: Int64Array, busy: bool = False
    ) -> Float32Array:
        session = self._busy_session if busy and self._busy_session is not None else self._session
        (out,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        return np.asarray(out, dtype=np.float32)
