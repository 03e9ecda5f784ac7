"""The CLI as scripts use it: ids on stdout, JSON on request, exit codes that mean something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segq import layout
from segq.settings import markdown_table

from support.cli import segq
from support.media import photo

pytestmark = pytest.mark.e2e


def test_submit_prints_ids_then_wait_status_list_and_get(client, tmp_path):
    srcs = [str(photo(tmp_path / f"c{i}.png", (100, 80), seed=i)) for i in range(2)]
    result = segq("submit", *srcs, "--task", "instance")
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 2 and all(len(i) == 16 for i in ids)

    result = segq("wait", *ids, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["state"] for r in json.loads(result.stdout)] == ["done", "done"]

    result = segq("status", ids[0], "--json")
    assert result.returncode == 0
    status = json.loads(result.stdout)
    assert status["id"] == ids[0] and status["source"] == srcs[0] and status["worker"]
    assert set(status["urls"]) == set(layout.output_names("instance"))
    assert "X-Amz-Expires=3600" in status["urls"][layout.OVERLAY] or "Expires=" in status["urls"][layout.OVERLAY]

    result = segq("status", ids[0])
    assert "done" in result.stdout and "inference" in result.stdout

    result = segq("list", "--json", "--limit", "50")
    listed = [r["id"] for r in json.loads(result.stdout)]
    assert listed.index(ids[1]) < listed.index(ids[0])  # newest first

    result = segq("get", ids[0], "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    got = sorted(Path(p).name for p in result.stdout.split())
    assert got == sorted(layout.output_names("instance"))
    assert (tmp_path / "out" / ids[0] / layout.OVERLAY).stat().st_size > 0


def test_submit_wait_exits_zero_and_prints_results(client, tmp_path):
    result = segq("submit", str(photo(tmp_path / "w.png", (90, 60))), "--task", "semantic", "--wait")
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout and "segments" in result.stdout


def _listed_commands(help_text: str) -> set[str]:
    """The names in the Commands section of a click help page."""
    section = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}


def test_every_command_has_help_with_examples():
    for cmd in ("submit", "status", "wait", "get", "list", "worker", "workers", "queues", "health", "exporter",
                "models", "up", "demo", "config"):
        result = segq(cmd, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, cmd
    assert "Exit codes" in segq("--help").stdout
    # The worker's commands come from the worker extra (entry points), listed with the others.
    assert {"worker", "config", "models", "submit"} <= _listed_commands(segq("--help").stdout)
    assert {"list", "tiny"} <= _listed_commands(segq("models", "--help").stdout)
    result = segq("models", "tiny", "--help")
    assert result.returncode == 0 and "--json" in result.stdout


def test_config_shows_every_setting_with_secrets_redacted(tmp_path):
    env = {"SEGQ_REDIS_URL": "redis://:hunter2@redis.example:6379/0", "AWS_SECRET_ACCESS_KEY": "s3cr3t-key",
           "SEGQ_ENV_FILE": str(tmp_path / "none.env")}
    result = segq("config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["SEGQ_REDIS_URL"] == "redis://:***@redis.example:6379/0"
    assert {"SEGQ_S3_BUCKET", "SEGQ_MODELS", "SEGQ_IMAGE_PROCESSOR", "SEGQ_ENV_FILE"} <= set(shown)
    text = segq("config", env=env)
    assert text.returncode == 0 and "redis://:***@redis.example:6379/0" in text.stdout
    for out in (result.stdout, text.stdout):
        assert "hunter2" not in out and "s3cr3t-key" not in out and "AWS_SECRET" not in out
    assert segq("config", "--markdown").stdout.strip() == markdown_table()


def test_models_list_shows_the_configured_checkpoints(client, tiny_models):
    rows = json.loads(segq("models", "list", "--json").stdout)
    assert {r["model"]: r["checkpoint"] for r in rows} == tiny_models


def test_a_video_from_the_cli_and_a_folder_mixing_images_and_videos(client, tmp_path):
    from support.media import video

    folder = tmp_path / "mixed"
    photo(folder / "a.jpg", (96, 64), fmt="JPEG")
    video(folder / "b.mp4", frames=12, size=(96, 64))
    (folder / "clip-without-extension").write_bytes((folder / "b.mp4").read_bytes())  # found by content
    result = segq("submit", str(folder), "--task", "semantic", "--chunk-frames", "5", "--batch-size", "2",
                  "--wait", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert sorted(r["kind"] for r in records) == ["image", "video", "video"]
    for r in records:
        assert r["state"] == "done"
        if r["kind"] == "video":
            assert (r["frames_total"], r["chunks_total"], r["batch_size"]) == (12, 3, 2)
    status = segq("status", next(r["id"] for r in records if r["kind"] == "video"))
    assert "12/12" in status.stdout and "overlay.mp4" in status.stdout
