"""Child processes that do not outlive their parent (Linux)."""

from __future__ import annotations

import signal
import sys


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


#: ``preexec_fn`` for subprocess.Popen: a killed ``segq up``, ``segq worker``, test run or
#: benchmark leaves no servers or workers behind.
die_with_parent = _die_with_parent if sys.platform.startswith("linux") else None
