"""Device and precision of a worker process.

A worker process is pinned to one GPU by ``CUDA_VISIBLE_DEVICES`` (set by ``segq worker``
before the process starts), so inside it the GPU is always ``cuda:0``. CUDA is first touched
here, in the process that runs the model, never in a parent that forks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from segq.settings import PRECISIONS


@dataclass(frozen=True)
class DeviceSpec:
    device: torch.device
    dtype: torch.dtype
    label: str  # e.g. "cuda:0 (NVIDIA H100, GPU 3)" or "cpu (2 threads)"


def select(precision: str = "auto", threads: int | None = None) -> DeviceSpec:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        # Half precision only where it is fast and supported: on CUDA.
        dtype = {"auto": torch.float16, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            precision
        ]
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpu = f", GPU {visible}" if visible else ""
        label = f"cuda:0 ({torch.cuda.get_device_name(0)}{gpu})"
    else:
        device = torch.device("cpu")
        dtype = torch.float32  # fp16 on CPU is slow and inexact; bf16 only when asked
        if precision == "bf16":
            dtype = torch.bfloat16
        label = f"cpu ({torch.get_num_threads()} threads)"
    return DeviceSpec(device=device, dtype=dtype, label=label)
