"""The input limits' messages (``segq.limits``): the producer and the workers say the same."""

import pytest

from segq.errors import InputError
from segq.limits import check_bytes, check_pixels


def test_a_file_over_the_byte_limit_is_refused_with_both_sizes():
    check_bytes(2**20, 2**20)  # at the limit: fine
    with pytest.raises(InputError, match=r"^clip\.mp4 is 3\.0 MiB, over the limit of 2\.0 MiB \(SEGQ_MAX_INPUT_BYTES\)$"):
        check_bytes(3 * 2**20, 2 * 2**20, "clip.mp4")


def test_just_over_the_limit_the_sizes_are_given_in_bytes():
    with pytest.raises(InputError, match=r"is 8,388,609 bytes, over the limit of 8,388,608 bytes \(8\.0 MiB\)"):
        check_bytes(8 * 2**20 + 1, 8 * 2**20)


def test_pictures_without_pixels_or_over_the_pixel_limit_are_refused():
    with pytest.raises(InputError, match=r"has no pixels \(0x5\)"):
        check_pixels(0, 5, 100)
    with pytest.raises(InputError, match="over the limit of"):
        check_pixels(20, 10, 100)
    check_pixels(10, 10, 100)
