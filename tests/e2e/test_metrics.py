"""`segq exporter` serves Prometheus metrics; `segq health --local` reports readiness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.stack import free_port

from support.media import photo
from support.cli import segq

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_exporter_counts_jobs_frames_and_queues(client, worker, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "producer", "exporter", "--port", str(port)],
                            env=dict(os.environ), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                before = scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        done_key = ("segq_jobs_total", (("kind", "image"), ("model", "coco-panoptic"), ("state", "done")))
        failed_key = ("segq_jobs_total", (("kind", "image"), ("model", "coco-panoptic"), ("state", "failed")))
        frames_key = ("segq_frames_processed_total", (("model", "coco-panoptic"),))
        empty = "inputs/metrics/e.png"  # an empty object fails on the worker (the CLI refuses empty files)
        client.storage.put_bytes(empty, b"")
        jobs = client.submit([str(photo(tmp_path / "m1.png", (64, 48))), str(photo(tmp_path / "m2.png", (64, 48))),
                              f"s3://{client.settings.s3_bucket}/{empty}"], task="panoptic")
        client.wait([j.id for j in jobs], timeout=120)
        after = scrape(port)
        assert after[done_key] - before.get(done_key, 0) == 2
        assert after[failed_key] - before.get(failed_key, 0) == 1
        assert after[frames_key] - before.get(frames_key, 0) == 2
        assert after[("segq_queue_depth", (("queue", "segq.model.coco-panoptic"),))] == 0
        assert after[("segq_pending_tasks", (("model", "coco-panoptic"), ("priority", "normal")))] == 0
        assert ("segq_in_flight_tasks", ()) in after and ("segq_batches_active", ()) in after
        # the backlog KEDA scales on (deploy/k8s/keda.yaml): everything ended, nothing left
        import json

        backlog = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/backlog?model=coco-panoptic",
                                                    timeout=10).read())
        assert backlog == {"model": "coco-panoptic", "pending": 0, "waiting": 0, "held": 0, "backlog": 0}
        every = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/backlog", timeout=10).read())
        assert set(every["models"]) >= {"ade-semantic", "coco-instance", "coco-panoptic"}
        assert after[("segq_workers", (("model", "coco-panoptic"),))] >= 1
        assert after[("segq_model_load_seconds", (("model", "coco-panoptic"), ("worker", worker)))] > 0
        assert after[("segq_job_fps", (("kind", "image"), ("model", "coco-panoptic")))] > 0
        # the model stages' figures (published as each task ends: poll a moment for the last one)
        model_items = lambda m: sum(v for (name, _), v in m.items() if name == "segq_model_items_total")  # noqa: E731
        deadline = time.monotonic() + 10
        while model_items(after) - model_items(before) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            after = scrape(port)
        assert model_items(after) - model_items(before) >= 2
        assert 0 <= after[("segq_model_busy_ratio", (("worker", worker),))] <= 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_health_is_ready_with_a_loaded_worker_on_this_host(worker):
    result = segq("health", "--local")
    assert result.returncode == 0, result.stderr
    assert worker in result.stdout


def test_health_fails_when_redis_is_unreachable(worker):
    result = segq("health", "--local", env={"SEGQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 1 and "redis unreachable" in result.stderr


def test_work_for_a_model_no_worker_serves_waits_pending_and_queues_counts_it(client, stack_env, tmp_path):
    """A model no live worker serves: its work is not released into its queue (no slot would take
    it) but waits in its batch, and `segq queues` counts it by priority, in tasks: the three
    images are two shards (a submission's first shards hold 1, then 2 images)."""
    import json

    env = {"SEGQ_MODELS": stack_env["SEGQ_MODELS"] + ",lonely=" + stack_env["SEGQ_MODELS"].split(",")[0].split("=")[1]}
    srcs = [str(photo(tmp_path / f"l{i}.png", (40, 30), seed=i)) for i in range(3)]
    result = segq("submit", *srcs, "--task", "semantic", "--model", "lonely", "--priority", "low",
                  "--batch", "lonely-1", env=env)
    assert result.returncode == 0, result.stderr
    assert "no live worker serves model 'lonely'" in result.stderr
    report = json.loads(segq("queues", "--json", env=env).stdout)
    assert report["queues"]["segq.model.lonely"] == {"waiting": 0, "unacked": 0,
                                                     "pending": {"high": 0, "normal": 0, "low": 2}}
    result = segq("cancel", "lonely-1", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(segq("queues", "--json", env=env).stdout)
    assert report["queues"]["segq.model.lonely"]["pending"]["low"] == 0


def test_a_real_prometheus_scrapes_the_exporter_and_promtool_finds_nothing_to_fix(client, worker, tmp_path):
    """The exporter behind basic auth, scraped by a real Prometheus (itself behind basic auth, on
    loopback): the job latency and stage histograms arrive, and `promtool check metrics` finds no
    problem in what the exporter serves."""
    import base64
    import json
    import secrets
    import shutil

    import bcrypt

    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.fail("Debian's prometheus package (prometheus, promtool) is needed: apt-get install prometheus")
    jobs = client.submit([str(photo(tmp_path / f"p{i}.png", (64, 48), seed=i)) for i in range(2)], task="semantic")
    client.wait([j.id for j in jobs], timeout=120)

    exporter_port, exporter_auth = free_port(), f"segq:{secrets.token_hex(8)}"
    exporter = subprocess.Popen([sys.executable, "-m", "producer", "exporter", "--port", str(exporter_port)],
                                env={**os.environ, "SEGQ_EXPORTER_AUTH": exporter_auth}, stderr=subprocess.DEVNULL)
    prom_port, prom_password = free_port(), secrets.token_hex(8)
    (tmp_path / "web.yml").write_text(json.dumps({"basic_auth_users": {
        "admin": bcrypt.hashpw(prom_password.encode(), bcrypt.gensalt(rounds=4)).decode()}}))
    user, password = exporter_auth.split(":")
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "segq", "basic_auth": {"username": user, "password": password},
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--web.config.file={tmp_path / 'web.yml'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = base64.b64encode(f"admin:{prom_password}".encode()).decode()

    def query(expr: str) -> list:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote(expr)
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        return json.loads(urllib.request.urlopen(req, timeout=5).read())["data"]["result"]

    try:
        with pytest.raises(urllib.error.HTTPError) as refused:  # the exporter asks for its credentials
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{exporter_port}/metrics", timeout=2)
                    break
                except urllib.error.URLError as exc:
                    if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        assert refused.value.code == 401
        req = urllib.request.Request(f"http://127.0.0.1:{exporter_port}/metrics",
                                     headers={"Authorization": "Basic " + base64.b64encode(exporter_auth.encode()).decode()})
        body = urllib.request.urlopen(req, timeout=10).read()
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), \
            (check.stdout + check.stderr).decode()
        families = {fam.name for fam in text_string_to_metric_families(body.decode())}
        assert {"segq_job_latency_seconds", "segq_stage_seconds", "segq_pending_tasks"} <= families
        deadline = time.monotonic() + 60
        while True:
            try:
                latency = query('segq_job_latency_seconds_count{model="ade-semantic"}')
                stages = query('sum by (stage) (segq_stage_seconds_count{model="ade-semantic"})')
                if latency and stages:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
            time.sleep(1)
        assert float(latency[0]["value"][1]) >= 2
        assert {s["metric"]["stage"] for s in stages} >= {"fetch", "decode", "forward", "postprocess", "upload"}
        p95 = query('histogram_quantile(0.95, sum by (le) (rate(segq_stage_seconds_bucket{stage="forward"}[1m])))')
        assert p95 is not None  # the quantile query the dashboard's panels use is well formed
    finally:
        prometheus.terminate()
        exporter.terminate()
        prometheus.wait(20)
        exporter.wait(10)


def test_the_exporter_probe_answers_for_a_container_health_check_with_the_credentials_of_its_environment(client):
    """`segq exporter --probe` (the deploy files' health check) exits 0 only where the exporter
    answers with the credentials of SEGQ_EXPORTER_AUTH, and says what is wrong otherwise."""
    import secrets

    port, auth = free_port(), f"prom:{secrets.token_hex(8)}"
    exporter = subprocess.Popen([sys.executable, "-m", "producer", "exporter", "--port", str(port)],
                                env={**os.environ, "SEGQ_EXPORTER_AUTH": auth}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while (ok := segq("exporter", "--probe", "--port", str(port), env={"SEGQ_EXPORTER_AUTH": auth})).returncode:
            assert "does not answer" in ok.stderr and time.monotonic() < deadline, ok.stderr
            time.sleep(0.2)
        assert "answers" in ok.stdout and auth.split(":")[1] not in ok.stdout + ok.stderr
        without = segq("exporter", "--probe", "--port", str(port), env={"SEGQ_EXPORTER_AUTH": ""})
        assert without.returncode == 1 and "asks for credentials" in without.stderr
        wrong = segq("exporter", "--probe", "--port", str(port), env={"SEGQ_EXPORTER_AUTH": "prom:wrong"})
        assert wrong.returncode == 1 and "were refused" in wrong.stderr and "wrong" not in wrong.stderr
        # on 0.0.0.0 (what the deploy files bind) the probe asks the loopback
        assert segq("exporter", "--probe", "--address", "0.0.0.0", "--port", str(port),
                    env={"SEGQ_EXPORTER_AUTH": auth}).returncode == 0
    finally:
        exporter.terminate()
        exporter.wait(10)
    gone = segq("exporter", "--probe", "--port", str(port), env={"SEGQ_EXPORTER_AUTH": auth})
    assert gone.returncode == 1 and "does not answer" in gone.stderr
