"""Safe image decoding: size limits before decoding, EXIF orientation, RGB."""

from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

from segq import limits, media
from segq.errors import InputError


_limit_lock = threading.Lock()


@contextmanager
def _pil_pixel_limit(limit: int | None):
    """Set PIL's global bomb limit for one call (a lock keeps threads from mixing them)."""
    with _limit_lock:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an image file -> an RGB PIL image, upright as its EXIF says.

    Raises InputError for empty, unreadable, truncated or oversized images. The pixel limit is
    checked from the header, before any pixel is decoded (decompression bombs).
    """
    if not data:
        raise InputError("input is empty (0 bytes)")
    try:
        # Opening reads only the header; PIL's own bomb check is replaced by ours just below,
        # which runs before any pixel is decoded.
        with _pil_pixel_limit(None):
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        found = media.container(data[: media.HEAD_BYTES])
        what = f"a {found} file" if found else "an unrecognised format"
        raise InputError(f"input is not a decodable image ({len(data)} bytes, {what})") from None
    width, height = img.size
    limits.check_pixels(width, height, max_pixels)
    fmt = img.format or "unknown"
    try:
        with _pil_pixel_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image is too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt or truncated {fmt} image: {exc}") from None
    return img
