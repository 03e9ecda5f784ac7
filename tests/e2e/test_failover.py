"""Redis failover: SEGQ_REDIS_URL names three Sentinels watching a primary and its replica (the
same redis-server binary); the primary is killed during a backlog of image jobs and a video, the
Sentinels promote the replica, and every segq client follows it: every job ends done, nothing runs
twice beyond what the leases and the watchdog account for, Flower keeps seeing the fleet."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from producer.client import Client
from producer.stack import SentinelRedis, wait_until
from segq import connections, registry
from segq.settings import Settings
from support.media import photo, video
from support.servers import start_worker, wait_for_worker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory, s3_server, tiny_models, stack_env):
    root = tmp_path_factory.mktemp("failover")
    redis_ha = SentinelRedis(root).start()
    env = {**stack_env, "SEGQ_REDIS_URL": redis_ha.url, "SEGQ_HEARTBEAT_SECONDS": "1",
           "SEGQ_RETRY_BUDGET": "180"}
    workers = [start_worker(root, env, f"f{i}") for i in (1, 2)]
    for service, hostname in workers:
        wait_for_worker(redis_ha.url, hostname, service)
    client = Client(Settings.from_env({**os.environ, **env}))
    yield redis_ha, client, env, workers
    for service, _ in workers:
        service.stop()
    redis_ha.stop()


def test_a_sentinel_failover_during_a_backlog_loses_no_job(sentinel_stack, tmp_path):
    redis_ha, client, env, workers = sentinel_stack
    images = client.submit([str(photo(tmp_path / f"f{i}.png", (64, 48), seed=i)) for i in range(24)],
                           task="semantic", batch="failover")
    [clip] = client.submit([str(video(tmp_path / "f.mp4", frames=48, size=(96, 64)))], task="semantic",
                           chunk_frames=8, batch_size=4)
    wait_until(lambda: client.batch("failover").done >= 3, 120, "the backlog under way")
    old = redis_ha.current_primary()
    redis_ha.primary.stop(sig=signal.SIGKILL)
    wait_until(lambda: redis_ha.current_primary() != old, 60, "the Sentinels to promote the replica")

    records = client.wait([j.id for j in images] + [clip.id], timeout=400)
    assert [r.state for r in records] == ["done"] * 25, [(r.state, r.error) for r in records]
    assert records[-1].frames_done == 48 and records[-1].assemblies >= 1
    for r in records:
        assert r.attempts <= 1 + (r.requeues or 0), (r.id, r.attempts, r.requeues, r.note)
    batch = client.batch("failover")
    assert (batch.done, batch.queued, batch.running) == (24, 0, 0) and batch.final
    # the workers are the same processes, now on the new primary
    wait_until(lambda: len(registry.workers(client.r)) >= 2, 60, "the workers' records on the new primary")
    assert all(service.running for service, _ in workers)


def test_a_client_cut_off_in_the_middle_of_a_command_follows_the_failover(tmp_path):
    """redis-py reconnects a connection that broke inside a command to the address it last had, for
    its whole retry budget; segq's client asks the Sentinels again, so the command goes on on the
    new primary (before, a worker's heartbeat knocked at the dead one for half a minute)."""
    ha = SentinelRedis(tmp_path).start()
    try:
        client = connections.redis_client(ha.url)
        client.set("segq-test-key", "kept")
        client.wait(1, 5000)  # on the replica too
        old = ha.current_primary()
        got: dict = {}

        def blocked() -> None:
            try:
                got["value"] = client.blpop("segq-test-list", timeout=2)  # in flight when the primary dies
            except Exception as exc:  # noqa: BLE001 - the test reads it
                got["error"] = exc

        thread = threading.Thread(target=blocked)
        thread.start()
        time.sleep(0.5)
        ha.primary.stop(sig=signal.SIGKILL)
        wait_until(lambda: ha.current_primary() != old, 60, "the Sentinels to promote the replica")
        thread.join(90)
        assert not thread.is_alive() and "error" not in got, got
        assert got["value"] is None  # the BLPOP ran again on the new primary and timed out there
        assert client.get("segq-test-key") == "kept"
        assert client.connection_pool.get_master_address() == ha.current_primary() != old
    finally:
        ha.stop()
