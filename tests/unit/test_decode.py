"""Still images only: animations and multi-page files are refused with their frame count, before any
pixel is decoded; a multi-picture JPEG (MPO, as phones write them) is its first picture."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from segq.errors import InputError
from workers.media.decode import decode_image, load, open_image


def encoded(fmt: str, frames: int, **options) -> bytes:
    images = [Image.new("RGB", (40, 30), (10 * i, 80, 160)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format=fmt, save_all=frames > 1, append_images=images[1:], **options)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, what", [
    ("GIF", "an animated GIF with 3 frames"),
    ("WEBP", "an animated WebP with 3 frames"),
    ("PNG", "an animated PNG with 3 frames"),
    ("TIFF", "a multi-page TIFF with 3 frames"),
])
def test_animations_and_multi_page_files_are_refused_with_their_frame_count(fmt, what):
    with pytest.raises(InputError, match=f"input is {what}: segq segments still images"):
        open_image(encoded(fmt, 3), 10**6)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"])
def test_one_frame_files_of_those_formats_are_images(fmt):
    assert decode_image(encoded(fmt, 1), 10**6).size == (40, 30)


def test_a_multi_picture_jpeg_is_its_first_picture():
    data = encoded("MPO", 2)
    img = open_image(data, 10**6)
    assert img.format == "MPO" and img.n_frames == 2
    rgb = load(img, 10**6)
    assert rgb.size == (40, 30) and rgb.getpixel((0, 0))[1] in range(70, 90)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    with pytest.raises(InputError, match="over the limit of 0.0 MP"):
        open_image(encoded("PNG", 1), 100)
