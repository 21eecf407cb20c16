"""GPU tier: runs only where CUDA is usable, and says why it skipped everywhere else.

The checks are session fixtures, so they run before the example artifacts are built:
a machine without CUDA skips these tests at once.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cuda_torch() -> str:
    """The CUDA device torch runs on (the name of GPU 0); skips without one."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        pytest.skip(f"no CUDA device: torch {torch.__version__} ({build}) sees none")
    return str(torch.cuda.get_device_name(0))


@pytest.fixture(scope="session")
def cuda_onnx(cuda_torch: str) -> str:
    """The CUDA device ONNX Runtime runs on; skips without onnxruntime-gpu or a device."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: install "
            "onnxruntime-gpu in place of onnxruntime (see the README)"
        )
    return cuda_torch
