"""Where outputs land when downloaded, and how `segq status` prints links."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from producer import display
from segq import layout


def test_downloads_keep_the_bucket_layout_under_the_job_folder():
    job = "0123456789abcdef"
    assert layout.output_relpath(job, layout.output_key(job, layout.OVERLAY)) == "overlay.jpg"
    assert layout.output_relpath(job, layout.output_key(job, layout.chunk_labels_name(3))) == "labels/chunk-00003.npz"


@pytest.mark.parametrize("key", [
    "outputs/0123456789abcdef/../../etc/passwd",
    "outputs/fedcba9876543210/overlay.jpg",
    "inputs/0123456789abcdef/input.png",
    "outputs/0123456789abcdef/",
    "outputs/0123456789abcdef//x",
])
def test_keys_outside_the_job_outputs_are_refused(key):
    with pytest.raises(ValueError):
        layout.output_relpath("0123456789abcdef", key)


def test_presigned_urls_are_printed_whole_even_to_a_narrow_file():
    url = "http://127.0.0.1:9000/segq/outputs/0123456789abcdef/overlay.jpg?" + "X-Amz-Signature=" + "ab" * 64
    buf = io.StringIO()
    console = Console(file=buf, width=80, soft_wrap=True)
    display.print_links(console, {"overlay.jpg": url, "labels/chunk-00000.npz": url})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert all(line.split()[-1] == url for line in lines)
    assert "…" not in buf.getvalue()
