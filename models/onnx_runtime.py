"""ONNX Runtime text embedder: CPU provider, CUDA provider on GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.text import Float32Array, Int64Array, TextEmbedder


class OnnxEmbedder(TextEmbedder):
    """Runs an exported sentence-embedding graph with ONNX Runtime."""

    _session: Any = None
    _providers: tuple[str, ...] = ()

    def load(self) -> None:
        """Create the inference session and run one warm-up batch."""
        import onnxruntime as ort

        self._load_tokenizer()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.options.intra_op_threads
        opts.inter_op_num_threads = self.options.inter_op_threads
        opts.log_severity_level = 3
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
        self._session = ort.InferenceSession(
            str(self.package_dir / self.meta.model_file), sess_options=opts, providers=providers
        )
        self._providers = tuple(self._session.get_providers())
        self._ready = True
        self.predict_batch(["warm up"])

    @property
    def device_name(self) -> str:
        """`cuda` when the CUDA provider is active, otherwise `cpu`."""
        return "cuda" if self._providers[:1] == ("CUDAExecutionProvider",) else "cpu"

    def _forward(self, input_ids: Int64Array, attention_mask: Int64Array) -> Float32Array:
        (out,) = self._session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        return np.asarray(out, dtype=np.float32)
