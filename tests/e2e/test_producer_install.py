"""The producer installs and runs without torch, transformers or OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.media import photo

BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'cv2'):
            raise ImportError(f'{name} is blocked: the producer must not need it')
sys.meta_path.insert(0, Blocked())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)


def test_the_blocker_works():
    result = run_blocked("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_producer_and_contract_import_without_ml_libraries():
    result = run_blocked(
        "import producer, producer.cli, producer.client, producer.inputs, producer.stack\n"
        "import segq.broker, segq.jobs, segq.storage, segq.settings, segq.protocol\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch','transformers','cv2')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.e2e
def test_a_producer_without_ml_libraries_submits_and_waits(client, tmp_path):
    src = photo(tmp_path / "p.png", (80, 60))
    result = run_blocked(
        "from producer.cli import main\n"
        f"sys.argv = ['segq', 'submit', {str(src)!r}, '--task', 'panoptic', '--wait', '--json']\n"
        "main()"
    )
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["state"] == "done" and record["task"] == "panoptic"


@pytest.mark.e2e
def test_a_producer_only_virtualenv_submits_and_waits(client, tmp_path):
    """`pip install segq` (no extras) into a fresh virtualenv without the system's packages: no
    torch, transformers or OpenCV arrive, and the CLI submits a job and waits for it."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "producer-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(root)], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', "
                            "'cv2', 'av', 'numpy') if u.find_spec(m)])"], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    src = photo(tmp_path / "p.png", (80, 60))
    result = subprocess.run([str(venv / "bin" / "segq"), "submit", str(src), "--task", "semantic", "--wait", "--json"],
                            capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["state"] == "done"
