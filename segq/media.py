"""What a file is, from its bytes: image or video, which container, and why a video is unreadable.

Pure Python over the first bytes of a file (and, for MP4/MOV, its top-level box headers), so the
producer (which has no PyAV) and the workers recognise inputs the same way. Messages describe a
file's structure and never quote its bytes.
"""

from __future__ import annotations

import io
import struct
from typing import IO

from segq.states import JobKind

IMAGE = JobKind.IMAGE
VIDEO = JobKind.VIDEO

#: How many leading bytes ``sniff`` needs.
HEAD_BYTES = 16


def container(head: bytes) -> str | None:
    """The container or image format named by a file's first bytes, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


_VIDEO_CONTAINERS = {"MP4/MOV", "Matroska/WebM", "AVI"}


def sniff(head: bytes) -> str | None:
    """IMAGE, VIDEO or None from the first bytes of a file."""
    found = container(head)
    if found is None:
        return None
    return VIDEO if found in _VIDEO_CONTAINERS else IMAGE


def iso_boxes(f: IO[bytes], size: int, limit: int = 10_000) -> list[tuple[str, int, int]]:
    """Top-level boxes of an MP4/MOV file: ``(type, offset, declared size)``, read from headers only.
    A box whose declared size runs past the end of the file is listed as it is declared."""
    boxes = []
    pos = 0
    while pos + 8 <= size and len(boxes) < limit:
        f.seek(pos)
        header = f.read(16)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header[:8])
        if length == 1 and len(header) >= 16:
            length = struct.unpack(">Q", header[8:16])[0]
        elif length == 0:
            length = size - pos
        name = kind.decode("latin-1") if kind.isascii() and kind.decode("latin-1").isprintable() else "?"
        if length < 8:
            boxes.append((name, pos, length))
            break
        boxes.append((name, pos, length))
        pos += length
    return boxes


def explain_unreadable_video(f: IO[bytes], size: int) -> str:
    """Why a demuxer could not open a file, in words: truncated MP4, no index, not a video..."""
    f.seek(0)
    head = f.read(HEAD_BYTES)
    if size == 0:
        return "not a readable video: the file is empty"
    found = container(head)
    if found is None:
        return "not a readable video: not a video container (neither MP4/MOV, Matroska/WebM nor AVI)"
    if found not in _VIDEO_CONTAINERS:
        return f"not a readable video: the file is a {found} image, not a video"
    if found == "MP4/MOV":
        boxes = iso_boxes(f, size)
        names = [b[0] for b in boxes]
        last = boxes[-1] if boxes else None
        cut = last is not None and (last[2] < 8 or last[1] + last[2] > size)
        if "moov" not in names:
            if cut:
                return (
                    f"truncated MP4/MOV: the file ends inside its '{last[0]}' box ({size - last[1]} of "
                    f"{last[2]} bytes present) and has no index (moov box); it was cut off, e.g. while "
                    f"being recorded or copied"
                )
            return "MP4/MOV without an index: no moov box (a recording that was never finalised?)"
        if cut:
            return f"truncated MP4/MOV: the file ends inside its '{last[0]}' box ({size - last[1]} of {last[2]} bytes present)"
        return "corrupt MP4/MOV: its boxes are intact but the demuxer refused the index (moov)"
    return f"truncated or corrupt {found} file: the demuxer cannot read its header"


def explain_unreadable_video_bytes(data: bytes) -> str:
    return explain_unreadable_video(io.BytesIO(data), len(data))
