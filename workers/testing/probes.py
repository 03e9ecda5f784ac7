"""Inputs and measurements that the memory test and the memory benchmarks share.

- :func:`big_jpeg`: a large JPEG of a few flat regions (a 6300 x 6300 one, 39.7 MP, is under a
  megabyte on disk): the worst case of the pixel limit at little upload cost;
- :func:`status_kb`: a field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in KiB (Linux).
"""

from __future__ import annotations

from pathlib import Path


def big_jpeg(path: Path, side: int = 6300, seed: int = 0) -> Path:
    """A ``side`` x ``side`` JPEG of 30 flat squares on a flat ground, written to ``path``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.empty((side, side, 3), np.uint8)
    arr[:] = rng.integers(60, 200, 3)
    for _ in range(30):
        x, y = rng.integers(0, side - 400, 2)
        arr[y:y + 400, x:x + 400] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path, quality=85)
    return path


def status_kb(pid: int | str, field: str) -> int:
    """``field`` of ``/proc/<pid>/status`` in KiB (``pid`` may be ``"self"``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")
