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


def video(path: Path, frames: int = 91, size=(320, 240), fps: int = 30, audio: bool = False, gop: int = 25) -> Path:
    """H.264 MP4 of moving shapes (with B-frames and a keyframe every ``gop`` frames), optionally
    with an AAC sine track."""
    from fractions import Fraction

    import av

    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"g": str(gop), "bf": "2", "crf": "23", "preset": "veryfast"}
        a_s = out.add_stream("aac", rate=44100) if audio else None
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = (40 + i % 50, 90, 160)
            cx, cy = int((i * 4) % w), int(h / 2 + (h / 4) * np.sin(i / 9))
            img[max(0, cy - 30):cy + 30, max(0, cx - 40):cx + 40] = (220, 40, 40)
            img[h // 2:, : w // 3] = (50, 160, 60)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if a_s is not None:
            _sine(out, a_s, frames / fps)
    return path


def _sine(out, stream, seconds: float, rate: int = 44100) -> None:
    """Encode a 440 Hz tone of ``seconds`` into ``stream`` (AAC, mono)."""
    import av

    wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    for start in range(0, len(wave), 1024):
        frame = av.AudioFrame.from_ndarray(wave[start:start + 1024].reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def audio_only(path: Path, seconds: float = 1.0) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        _sine(out, out.add_stream("aac", rate=44100), seconds)
    return path
