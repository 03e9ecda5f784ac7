"""Draw the demo's street image and clip into ``producer/data/`` (shipped as package data).

``segq demo`` reads the two files with ``importlib.resources`` and draws nothing at run time, so
the producer needs neither Pillow nor PyAV for it. Run this (with the worker extra installed:
Pillow, numpy, PyAV) only to change them:

    python scripts/make_demo_media.py            # writes producer/data/demo-street.{jpg,mp4}
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "producer" / "data"


def demo_image(path: Path, width: int = 640, height: int = 426) -> Path:
    """A synthetic street scene (sky, buildings, road, a car, people), saved as JPEG."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    for y in range(int(height * 0.55)):  # sky gradient
        c = 235 - y // 3
        d.line([(0, y), (width, y)], fill=(110, 160, c))
    d.rectangle([0, int(height * 0.62), width, height], fill=(88, 88, 92))  # road
    d.rectangle([0, int(height * 0.55), width, int(height * 0.62)], fill=(170, 170, 160))  # sidewalk
    for i, (x, w, h, col) in enumerate([(10, 120, 190, (150, 80, 60)), (140, 90, 240, (190, 180, 160)),
                                          (440, 180, 210, (120, 110, 130))]):
        top = int(height * 0.55) - h
        d.rectangle([x, top, x + w, int(height * 0.55)], fill=col)
        for wy in range(top + 15, int(height * 0.55) - 25, 35):
            for wx in range(x + 12, x + w - 20, 28):
                d.rectangle([wx, wy, wx + 14, wy + 20], fill=(60, 80, 110))
    d.ellipse([250, 150, 330, 230], fill=(40, 120, 40))  # tree crown
    d.rectangle([284, 225, 296, 262], fill=(90, 60, 30))
    d.rounded_rectangle([300, 270, 470, 330], radius=18, fill=(180, 20, 30))  # car
    d.rectangle([335, 240, 430, 275], fill=(150, 20, 30))
    for cx in (330, 440):
        d.ellipse([cx - 18, 315, cx + 18, 351], fill=(20, 20, 20))
    for px in (90, 560):  # people
        d.ellipse([px - 10, 200, px + 10, 222], fill=(230, 190, 160))
        d.rectangle([px - 12, 222, px + 12, 275], fill=(40, 60, 160))
        d.rectangle([px - 10, 275, px + 10, 320], fill=(30, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


def demo_video(still: Path, path: Path, frames: int = 48, fps: int = 24) -> Path:
    """The demo scene as an H.264 clip: a red box drives along the road (a keyframe every 16 frames)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from workers.media.video import PartEncoder

    base = np.asarray(Image.open(still).convert("RGB"))
    h, w = base.shape[:2]
    encoder = PartEncoder(path, Fraction(fps), gop=16)
    for i in range(frames):
        frame = base.copy()
        x = int(i * (w - 120) / frames)
        frame[int(h * 0.75):int(h * 0.75) + 40, x:x + 110] = (190, 25, 35)
        encoder.write(frame)
    encoder.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help=f"folder (default {DATA.relative_to(ROOT)})")
    args = parser.parse_args()
    image = demo_image(args.out / "demo-street.jpg")
    clip = demo_video(image, args.out / "demo-street.mp4")
    for f in (image, clip):
        print(f"{f}  {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
