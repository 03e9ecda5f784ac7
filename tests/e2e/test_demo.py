"""The README's main command: `segq demo` starts its own stack and segments a demo image, and
the offline checkpoints it runs segment the demo's street (scored against the generator's truth)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from bench import scenes
from bench.quality import SemanticScore

#: The demo image's semantic mIoU over the classes it shows, measured: docs/offline-models.md.
DEMO_MIOU_FLOOR = 0.45


def test_demo_runs_the_whole_stack_and_downloads_outputs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGQ_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "producer", "demo", "--data-dir", str(tmp_path / "stack"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env={**env, "COLUMNS": "200"}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": done") == 4
    assert "flower: http://127.0.0.1:" in result.stdout
    jobs = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(jobs) == 4
    tasks = set()
    semantic = None
    for job in jobs:
        if (job / "overlay.mp4").exists():  # the clip
            import av

            with av.open(str(job / "overlay.mp4")) as c:
                assert sum(1 for _ in c.decode(c.streams.video[0])) == 48
            continue
        doc = json.loads((job / "segments.json").read_text())
        tasks.add(doc["task"])
        if doc["task"] == "semantic":
            semantic = np.asarray(Image.open(job / "labels.png"))
        assert Image.open(job / "overlay.jpg").size == Image.open(tmp_path / "out" / "demo-street.jpg").size
    assert tasks == {"semantic", "instance", "panoptic"}
    # The demo image is the generator's held-out scene DEMO_SEED: its truth is drawn again here.
    score = SemanticScore("ade20k")
    score.add(scenes.scene(scenes.DEMO_SEED, semantic.shape[::-1]), semantic)
    assert score.miou() >= DEMO_MIOU_FLOOR, score.iou()
    assert not (tmp_path / "stack" / "segq.env").exists()  # the stack stopped and cleaned up
    flower_url = result.stdout.split("flower: ")[1].split()[0]
    assert f"Visit me at {flower_url}" in (tmp_path / "stack" / "logs" / "flower.log").read_text()
