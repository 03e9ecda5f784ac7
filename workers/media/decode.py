"""Safe image decoding: size limits before decoding, EXIF orientation, RGB, still images only.

Two steps, so that a worker can reserve memory for an image before it decodes it
(``workers.host.budget``): :func:`open_image` reads only the header (format, size, frames) and refuses
what will not be decoded; :func:`load` decodes the pixels. :func:`decode_image` does both.

Animated GIF, WebP and PNG and multi-page TIFF are refused with the number of frames they hold:
segq segments still images, and segmenting the first frame of an animation without saying so
would pass for a result (convert an animation to a video to segment every frame). Multi-picture
JPEGs (MPO, as phones write them: the photo and a preview or depth map) are still images: the
first picture is the photo.
"""

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


#: Formats whose extra frames are an animation or pages, not a preview of the first.
MULTI_FRAME_FORMATS = {"GIF": "an animated GIF", "WEBP": "an animated WebP", "PNG": "an animated PNG",
                       "TIFF": "a multi-page TIFF"}


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an image file -> an RGB PIL image, upright as its EXIF says (``open_image`` then
    ``load``)."""
    return load(open_image(data, max_pixels), max_pixels)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image in ``data``, its header read and checked, no pixel decoded yet.

    Raises InputError for empty, unreadable or oversized images (the pixel limit is checked from
    the header: decompression bombs) and for animations and multi-page files.
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
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format in MULTI_FRAME_FORMATS:
        raise InputError(f"input is {MULTI_FRAME_FORMATS[img.format]} with {frames} frames: segq segments still "
                         f"images (convert it to a video, e.g. an MP4, to segment every frame)")
    return img


def load(img: Image.Image, max_pixels: int) -> Image.Image:
    """Decode an image from ``open_image``: RGB, upright as its EXIF says. InputError when it is
    corrupt or truncated."""
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
