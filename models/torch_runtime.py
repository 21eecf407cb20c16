"""PyTorch text embedder: CPU, or CUDA with fp16 and CUDA graphs when a GPU is present."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from models.cpus import intra_op_threads
from models.text import Float32Array, Int64Array, TextEmbedder

if TYPE_CHECKING:
    from models.cuda_graphs import ShapeGraphs


class TorchEmbedder(TextEmbedder):
    """Runs the transformer encoder plus pooling head in PyTorch."""

    _model: Any = None
    _device: str = "cpu"
    _graphs: ShapeGraphs | None = None

    def load(self) -> None:
        """Load safetensors weights onto the device and run one warm-up batch."""
        import torch
        from transformers import AutoModel

        from models.pooling import SentenceEmbedding

        self._load_tokenizer()
        # torch's own default is one thread per physical core of the machine, whatever
        # a container's CPU limit: in a pod on a large node, far more threads than its
        # quota runs at once, each waiting for the others at every step (README, "CPU
        # limits"). Left at 0, the count stays within the limit.
        torch.set_num_threads(intra_op_threads(self.options.intra_op_threads))
        if self.options.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device gpu asked for, but torch sees no CUDA device")
            self._device = "cuda:0"
        encoder = AutoModel.from_pretrained(self.package_dir / self.meta.model_file)
        model = SentenceEmbedding(encoder).eval().to(self._device)
        if self._device.startswith("cuda") and self.options.gpu_fp16:
            model = model.half()
        self._model = model
        if self._device.startswith("cuda") and self.options.gpu_graphs:
            from models.cuda_graphs import MAX_ROWS, ShapeGraphs

            self._graphs = ShapeGraphs(
                model,
                self._device,
                rows_top=min(self.options.micro_batch, MAX_ROWS),
                width_top=self.meta.max_seq_length_tokens,
            )
            self._graphs.prepare()
        self._ready = True
        self.predict_batch(["warm up"])

    @property
    def cuda_graphs(self) -> int:
        """CUDA graphs serving batches (one per padded shape); 0 when the model runs
        eagerly (on CPU, with `gpu_graphs` off, or after a capture failed)."""
        graphs = self._graphs
        return graphs.count if graphs is not None and graphs.active else 0

    @property
    def device_name(self) -> str:
        """`cuda:0` on GPU, otherwise `cpu`."""
        return self._device

    def _forward(
        self, input_ids: Int64Array, attention_mask: Int64Array, busy: bool = False
    ) -> Float32Array:
        import torch

        if self._graphs is not None:
            replayed = self._graphs.run(input_ids, attention_mask)
            if replayed is not None:
                return replayed
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self._device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(self._device, non_blocking=True)
            out = self._model(ids, mask)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)
