"""Memory is bounded by a budget, not by luck: three 39.7 MP images submitted at once to one
worker at the default concurrency run one at a time, and its peak memory grows by at most 1.5 GB
over its warm baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.media import photo
from support.servers import start_worker, wait_for_worker

pytestmark = pytest.mark.e2e

GB = 1024 ** 3


def big_jpeg(path: Path, side: int = 6300, seed: int = 0) -> Path:
    """A 6300 x 6300 JPEG (39.7 MP) of a few flat regions: under a megabyte on disk."""
    rng = np.random.default_rng(seed)
    arr = np.empty((side, side, 3), np.uint8)
    arr[:] = rng.integers(60, 200, 3)
    for _ in range(30):
        x, y = rng.integers(0, side - 400, 2)
        arr[y:y + 400, x:x + 400] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path, quality=85)
    return path


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture(scope="module")
def big_worker(session_dir, stack_env, redis_client):
    from producer.client import Client
    from segq import registry
    from segq.settings import Settings

    env = {**stack_env, "SEGQ_MAX_IMAGE_PIXELS": "40000000", "SEGQ_MODELS": stack_env["SEGQ_MODELS"] + ",big="
           + stack_env["SEGQ_MODELS"].split(",")[0].split("=", 1)[1]}
    service, hostname = start_worker(session_dir, env, "big", models="big")
    wait_for_worker(env["SEGQ_REDIS_URL"], hostname, service)
    client = Client(Settings.from_env({**stack_env, **env}))
    yield client, registry.get(client.r, hostname).pid
    service.stop()


def test_three_40_megapixel_images_at_once_stay_within_the_memory_budget(big_worker, tmp_path):
    client, pid = big_worker
    warm = client.submit([str(photo(tmp_path / f"w{i}.png", (640, 480), seed=i)) for i in range(3)],
                         task="semantic", model="big")
    client.wait([j.id for j in warm], timeout=120)
    baseline = status_kb(pid, "VmRSS") * 1024
    images = [str(big_jpeg(tmp_path / f"big{i}.jpg", seed=i)) for i in range(3)]
    jobs = client.submit(images, task="semantic", model="big")
    records = client.wait([j.id for j in jobs], timeout=600)
    assert [r.state for r in records] == ["done"] * 3, [r.error for r in records]
    assert all((r.width, r.height) == (6300, 6300) for r in records)
    peak = status_kb(pid, "VmHWM") * 1024
    growth = peak - baseline
    assert growth <= 1.5 * GB, f"peak memory grew by {growth / GB:.2f} GB over the warm baseline"
