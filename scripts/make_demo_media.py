"""Draw the demo's street image and clip into ``producer/data/`` (shipped as package data).

Both come from the procedural street generator ``bench/scenes.py`` with a held-out seed
(``bench.scenes.DEMO_SEED``: the offline checkpoints never trained on it): a 640x426 JPEG and 48
frames of the same street (cars driving, people walking) as H.264. ``segq demo`` reads the two files with ``importlib.resources`` and draws nothing at run time, so
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


def demo_image(path: Path, width: int = 640, height: int = 426, seed: int | None = None) -> Path:
    """A street scene from ``bench/scenes.py`` (a held-out seed: the offline models never trained
    on it), saved as JPEG."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from bench import scenes

    sc = scenes.scene(scenes.DEMO_SEED if seed is None else seed, (width, height))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sc.image).save(path, quality=92)
    return path


def demo_video(path: Path, frames: int = 48, fps: int = 24, width: int = 640, height: int = 426,
               seed: int | None = None) -> Path:
    """The demo street as an H.264 clip (a keyframe every 16 frames): its cars drive and its
    people walk (``bench.scenes.clip``, the seed of the still: frame 0 is the still)."""
    sys.path.insert(0, str(ROOT))
    from bench import scenes
    from workers.media.video import PartEncoder

    encoder = PartEncoder(path, Fraction(fps), gop=16)
    for sc in scenes.clip(scenes.DEMO_SEED if seed is None else seed, frames, (width, height)):
        encoder.write(sc.image)
    encoder.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help=f"folder (default {DATA.relative_to(ROOT)})")
    args = parser.parse_args()
    image = demo_image(args.out / "demo-street.jpg")
    clip = demo_video(args.out / "demo-street.mp4")
    for f in (image, clip):
        print(f"{f}  {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
