"""Test inputs, generated: photos of shapes, broken files, rotated JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo(path: Path, size=(320, 240), seed: int = 0, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(60, 200, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def rotated_jpeg(path: Path, size=(300, 200)) -> Path:
    """A JPEG stored 300x200 whose EXIF says 'rotate 90' (orientation 6): upright it is 200x300."""
    photo(path.with_suffix(".tmp.png"), size)
    img = Image.open(path.with_suffix(".tmp.png"))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=92)
    path.with_suffix(".tmp.png").unlink()
    return path


def truncated_jpeg(path: Path) -> Path:
    photo(path, (320, 240), fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def huge_png(path: Path, size=(2600, 2000)) -> Path:
    """5.2 MP of one colour: a few KB on disk, over the tests' 4 MP limit."""
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path
