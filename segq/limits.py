"""The input limits and their messages, in one place (producer and workers say the same)."""

from __future__ import annotations

from segq.errors import InputError


def check_bytes(size: int, limit: int, what: str = "input") -> None:
    """InputError when a file of ``size`` bytes is over ``limit`` (``SEGQ_MAX_INPUT_BYTES``)."""
    if size > limit:
        mine, most = f"{size / 2**20:.1f} MiB", f"{limit / 2**20:.1f} MiB"
        if mine == most:  # just over: the rounded sizes would read the same
            mine, most = f"{size:,} bytes", f"{limit:,} bytes ({most})"
        raise InputError(f"{what} is {mine}, over the limit of {most} (SEGQ_MAX_INPUT_BYTES)")


def check_pixels(width: int, height: int, limit: int, what: str = "image") -> None:
    """InputError when a ``width`` x ``height`` picture is over ``limit`` pixels (``SEGQ_MAX_IMAGE_PIXELS``)."""
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has no pixels ({width}x{height})")
    if width * height > limit:
        raise InputError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{limit / 1e6:.1f} MP (SEGQ_MAX_IMAGE_PIXELS)"
        )
