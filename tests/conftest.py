"""Shared by every tier: the summary of the equivalence comparisons the run made."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ref = sys.modules.get("support.reference")
    if ref is None or not ref.SEEN.maps:
        return
    seen = ref.SEEN
    terminalreporter.write_line(
        f"equivalence with transformers: {seen.maps} label maps, {seen.pixels} pixels, "
        f"{seen.differing} differing, of which {seen.near_ties} at near-ties of the reference"
    )
