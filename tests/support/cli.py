"""Running the real `segq` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def segq(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
