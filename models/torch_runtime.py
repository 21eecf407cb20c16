"""PyTorch text embedder: CPU, or CUDA with fp16 when a GPU is present."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.text import Float32Array, Int64Array, TextEmbedder


class TorchEmbedder(TextEmbedder):
    """Runs the transformer encoder plus pooling head in PyTorch."""

    _model: Any = None
    _device: str = "cpu"

    def load(self) -> None:
        """Load safetensors weights onto the device and run one warm-up batch."""
        import torch
        from transformers import AutoModel

        from models.pooling import SentenceEmbedding

        self._load_tokenizer()
        if self.options.intra_op_threads:
            torch.set_num_threads(self.options.intra_op_threads)
        if self.options.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device gpu asked for, but torch sees no CUDA device")
            self._device = "cuda:0"
        encoder = AutoModel.from_pretrained(self.package_dir / self.meta.model_file)
        model = SentenceEmbedding(encoder).eval().to(self._device)
        if self._device.startswith("cuda") and self.options.gpu_fp16:
            model = model.half()
        self._model = model
        self._ready = True
        self.predict_batch(["warm up"])

    @property
    def device_name(self) -> str:
        """`cuda:0` on GPU, otherwise `cpu`."""
        return self._device

    def _forward(
        self, input_ids: Int64Array, attention_mask: Int64Array, busy: bool = False
    ) -> Float32Array:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self._device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).to(self._device, non_blocking=True)
            out = self._model(ids, mask)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)
