"""Recognising inputs from their bytes, and saying why a video cannot be read."""

from __future__ import annotations

import struct

import pytest

from segq import media


def box(kind: bytes, payload: bytes = b"", declared: int | None = None) -> bytes:
    return struct.pack(">I4s", declared if declared is not None else 8 + len(payload), kind) + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")


@pytest.mark.parametrize("head, kind, name", [
    (b"\xff\xd8\xff\xe0" + b"\0" * 12, media.IMAGE, "JPEG"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, media.IMAGE, "PNG"),
    (b"RIFF\0\0\0\0WEBPVP8 ", media.IMAGE, "WebP"),
    (FTYP[:16], media.VIDEO, "MP4/MOV"),
    (b"\x1a\x45\xdf\xa3" + b"\0" * 12, media.VIDEO, "Matroska/WebM"),
    (b"RIFF\0\0\0\0AVI LIST", media.VIDEO, "AVI"),
    (b"not a video\nnot a", None, None),
])
def test_formats_are_recognised_by_their_first_bytes(head, kind, name):
    assert media.sniff(head) == kind
    assert media.container(head) == name


def test_an_mp4_cut_inside_its_media_data_is_called_truncated_without_an_index():
    data = FTYP + box(b"mdat", b"\x01" * 100, declared=5000)
    message = media.explain_unreadable_video_bytes(data)
    assert message.startswith("truncated MP4/MOV: the file ends inside its 'mdat' box (108 of 5000 bytes present)")
    assert "no index (moov box)" in message


def test_an_mp4_with_complete_boxes_but_no_index_says_so():
    message = media.explain_unreadable_video_bytes(FTYP + box(b"free", b"\0" * 10) + box(b"mdat", b"\x01" * 50))
    assert message.startswith("MP4/MOV without an index: no moov box")


def test_text_named_mp4_is_not_a_video_container_and_its_bytes_are_not_quoted():
    data = b"secret-token-123 not a video\n" * 30
    message = media.explain_unreadable_video_bytes(data)
    assert message == "not a readable video: not a video container (neither MP4/MOV, Matroska/WebM nor AVI)"
    assert "secret" not in message


def test_an_image_given_as_a_video_and_an_empty_file():
    assert "is a PNG image, not a video" in media.explain_unreadable_video_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert media.explain_unreadable_video_bytes(b"") == "not a readable video: the file is empty"


def test_box_walk_handles_64_bit_sizes_and_stops_on_nonsense():
    big = struct.pack(">I4sQ", 1, b"mdat", 24) + b"\0" * 8
    assert [b[0] for b in media.iso_boxes(__import__("io").BytesIO(FTYP + big), len(FTYP) + 24)] == ["ftyp", "mdat"]
    broken = FTYP + struct.pack(">I4s", 3, b"junk")
    boxes = media.iso_boxes(__import__("io").BytesIO(broken), len(broken))
    assert boxes[-1] == ("junk", len(FTYP), 3)
    assert "truncated MP4/MOV" in media.explain_unreadable_video_bytes(broken)
