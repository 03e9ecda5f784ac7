"""Memory is bounded by a budget, not by luck: three 39.7 MP images submitted at once to one
worker at the default concurrency run one at a time, and its peak memory grows by at most 1.5 GB
over its warm baseline."""

from __future__ import annotations


import pytest

from support.media import photo
from support.servers import start_worker, wait_for_worker
from workers.testing.probes import big_jpeg, status_kb

pytestmark = pytest.mark.e2e

GB = 1024 ** 3


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
