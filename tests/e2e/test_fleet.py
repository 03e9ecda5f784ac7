"""Scale out and watch it: workers on several "hosts" share one queue; Flower, `segq workers`
and `segq queues` show the fleet; a worker that joins mid-run takes work; one stopped with
SIGTERM finishes its chunk first."""

from __future__ import annotations

import base64
import json
import signal
import time
import urllib.request

import pytest

from segq import keys

from support.servers import start_worker, wait_for_worker
from support.media import photo, video
from support.cli import segq
from support.fleet import chunk_workers, workers_of_a_mixed_batch

pytestmark = pytest.mark.e2e


def flower_api(flower, path: str):
    req = urllib.request.Request(f"{flower.url}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"admin:s3cret").decode())
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


@pytest.fixture(scope="module")
def third_worker_service(session_dir, stack_env, redis_client, worker, second_worker):
    """A third worker standing for another host (its own Celery node name, host-c)."""
    service, hostname = start_worker(session_dir, stack_env, "w3", host="host-c")
    wait_for_worker(stack_env["SEGQ_REDIS_URL"], hostname, service)
    yield service, hostname
    service.stop()


@pytest.fixture(scope="module")
def third_worker(third_worker_service):
    return third_worker_service[1]


def test_three_workers_share_one_queue_and_every_view_lists_them(
        client, worker, second_worker, third_worker, flower, tmp_path):
    fleet = {worker, second_worker, third_worker}
    used, image_ids, clip_id = workers_of_a_mixed_batch(client, tmp_path)
    assert used == fleet

    asked = time.monotonic()
    listed = json.loads(segq("workers", "--json", "--timeout", "5").stdout)
    # each of its three broadcasts ends when every registered worker has answered: it used to wait
    # out the whole timeout three times (15 s); a silent worker costs one timeout and one re-ask
    assert time.monotonic() - asked < 12
    assert {w["hostname"] for w in listed} >= fleet
    for w in listed:
        if w["hostname"] in fleet:
            assert w["live"] and w["models"] == ["ade-semantic", "coco-instance", "coco-panoptic"]
            assert w["device"].startswith("cpu") and w["responding"] is True

    queues = json.loads(segq("queues", "--json").stdout)
    assert queues["queues"]["segq.model.ade-semantic"]["waiting"] == 0
    assert set(queues["leases"]) == {"running", "held", "of_lost_workers"}

    deadline = time.monotonic() + 30
    while True:  # Flower learns workers from their events and heartbeats
        seen = set(flower_api(flower, "/api/workers?refresh=1"))
        if seen >= fleet or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen >= fleet
    tasks = flower_api(flower, "/api/tasks?limit=1000")
    mine = {t["uuid"]: t for t in tasks.values() if clip_id in t["uuid"]}
    assert mine[clip_id]["name"] == "segq.split_video"
    assert f"{clip_id}-assemble" in mine
    image = client.status(image_ids[0])
    shard_task = f"shard:{image.batch}:{image.shard:06d}"  # an image's task is its shard's
    assert shard_task in tasks and tasks[shard_task]["name"] == "segq.segment_shard"
    assert image.batch in tasks[shard_task]["kwargs"]  # the batch is visible in Flower


def test_flower_requires_its_password_on_every_page_metrics_included(flower):
    """Flower itself leaves /metrics open under basic auth; segq's Flower app closes it."""
    for path in ("/api/workers", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{flower.url}{path}", timeout=10)
        assert err.value.code == 401, path
    wrong = urllib.request.Request(f"{flower.url}/metrics",
                                   headers={"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(wrong, timeout=10)
    assert err.value.code == 401
    right = urllib.request.Request(f"{flower.url}/metrics",
                                   headers={"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()})
    body = urllib.request.urlopen(right, timeout=10).read().decode()
    assert "flower_events_total" in body or "flower_worker_online" in body
    # the probe page stays open and says nothing
    assert urllib.request.urlopen(f"{flower.url}/healthcheck", timeout=10).read() == b"OK"


def test_a_joining_worker_takes_work_and_a_sigtermed_one_finishes_its_chunk(
        client, session_dir, stack_env, redis_client, worker, second_worker, third_worker_service, tmp_path):
    w3, third_worker = third_worker_service
    frames = 300
    src = video(tmp_path / "long.mp4", frames=frames, size=(320, 240), gop=20)
    # A fourth worker joins while the job runs (it starts loading as the job is submitted: on a
    # fast machine three workers can otherwise finish the job before a fourth has loaded).
    joiner, joiner_name = start_worker(session_dir, stack_env, "w4", models="semantic", host="host-d")
    try:
        [job] = client.submit([str(src)], task="semantic", chunk_frames=5, batch_size=5)
        wait_for_worker(stack_env["SEGQ_REDIS_URL"], joiner_name, joiner)
        left = frames - client.status(job.id).frames_done
        assert left >= frames // 3, f"the job was nearly done ({left} frames left) when the fourth worker joined"
        # Stop the third worker with SIGTERM while it works on a chunk.
        deadline = time.monotonic() + 120
        while "segq.segment_chunk" not in (redis_client.hget(keys.worker(third_worker), "active") or ""):
            assert time.monotonic() < deadline, "the third worker never took a chunk"
            time.sleep(0.02)
        active = redis_client.hget(keys.worker(third_worker), "active")  # its running tasks, "; "-joined
        chunk_indexes = {int(t.split("[", 1)[1].split("]", 1)[0].rsplit("chunk", 1)[1])
                         for t in active.split("; ") if t.startswith("segq.segment_chunk[")}
        w3.proc.send_signal(signal.SIGTERM)  # to `segq worker`, which passes it to its Celery process
        code = w3.proc.wait(120)
        [done] = client.wait([job.id], timeout=600)
    finally:
        joiner.stop()

    assert code == 0  # a warm shutdown
    assert done.state == "done", done.error
    assert (done.frames_done, done.frames_total, done.assemblies) == (frames, frames, 1)
    infos = client.records.chunk_infos(job.id)
    assert chunk_indexes and all(infos[i]["worker"] == third_worker for i in chunk_indexes)  # it finished the chunks it held
    assert joiner_name in {c["worker"] for c in infos.values()}  # the newcomer took work


def test_flower_tasks_page_shows_segmentation_tasks_in_a_real_browser(client, flower, tmp_path):
    """Headless Chromium opens Flower's tasks page (basic auth in the URL) while segq runs jobs;
    the segmentation tasks are in the rendered page. The screenshot is kept in test-artifacts/."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    jobs = client.submit([str(photo(tmp_path / f"b{i}.png", (96, 64), seed=i)) for i in range(3)], task="instance")
    client.wait([j.id for j in jobs], timeout=120)

    url = f"http://admin:s3cret@{flower.url.removeprefix('http://')}/tasks"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=10000", "--window-size=1400,900"]
    dom = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert "segq.segment_shard" in dom
    for job in jobs:  # an image's task is its shard's, named by batch: from `segq status` straight to Flower
        assert f"shard:{job.batch}:{job.shard:06d}" in dom

    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "flower-tasks.png"
    subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


def test_a_worker_whose_model_does_not_load_exits_and_takes_no_job(session_dir, stack_env, redis_client):
    # a checkpoint folder that does not exist: the process logs why and exits with 78 (a
    # configuration that cannot work), `segq worker` does not restart it, and it never takes a
    # message (Celery alone would log the start failure and serve anyway, failing jobs)
    env = {**stack_env, "SEGQ_MODELS": "ade-semantic=/nonexistent/segq-checkpoint"}
    service, hostname = start_worker(session_dir, env, "wbad", models="ade-semantic")
    try:
        assert service.proc.wait(timeout=120) == 78
    finally:
        service.stop()
    log = service.log_path.read_text(errors="replace")
    assert "failed to start" in log and "cannot load model 'ade-semantic'" in log
    assert "starting it again" not in log
    assert redis_client.exists(keys.worker(hostname)) == 0  # its record is gone with it
