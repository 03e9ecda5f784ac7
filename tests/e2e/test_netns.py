"""Three worker hosts, each in its own network namespace with its own hostname, reach Redis and
S3 over veth links through a bridge, as separate machines would, and share one queue.

Needs root and iproute2 (``ip netns``): CI has both. Addresses are the test's own: a bridge at
10.231.0.1 on this machine and one namespace per host at 10.231.0.11-13.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import redis

from producer.stack import RedisServer, SeaweedS3, Service
from segq import keys

from support.cli import segq
from support.fleet import workers_of_a_mixed_batch

pytestmark = pytest.mark.e2e

BRIDGE_IP = "10.231.0.1"
TAG = f"sq{os.getpid() % 100000}"
HOSTS = [f"host-{i}" for i in (1, 2, 3)]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        return False
    try:
        sh("ip", "netns", "add", f"{TAG}-probe")
        sh("ip", "netns", "del", f"{TAG}-probe")
        return True
    except subprocess.CalledProcessError:
        return False


@pytest.fixture(scope="module")
def network():
    if not netns_available():
        if os.environ.get("CI"):
            pytest.fail("network namespaces are not available (needs root and iproute2)")
        pytest.skip("needs root and `ip netns`")
    bridge = f"{TAG}br"
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")
    namespaces = []
    try:
        for i, host in enumerate(HOSTS, start=1):
            ns, outer = f"{TAG}-{host}", f"{TAG}v{i}"
            sh("ip", "netns", "add", ns)
            namespaces.append(ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", outer, "master", bridge)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "-n", ns, "addr", "add", f"10.231.0.{10 + i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield dict(zip(HOSTS, namespaces))
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@pytest.fixture(scope="module")
def remote_stack(network, tmp_path_factory, tiny_models):
    """Redis and S3 listening on the bridge; workers in the namespaces reach them over veth."""
    root = tmp_path_factory.mktemp("netns")
    r = RedisServer("redis", root / "logs" / "redis.log", data_dir=root / "redis", host=BRIDGE_IP).start()
    s3 = SeaweedS3("s3", root / "logs" / "s3.log", data_dir=root / "s3", host=BRIDGE_IP).start()
    env = {"SEGQ_REDIS_URL": r.url, **s3.env(),
           "SEGQ_MODELS": ",".join(f"{k}={v}" for k, v in tiny_models.items()), "PYTHONUNBUFFERED": "1"}
    workers = []
    try:
        for host, ns in network.items():
            svc = Service(host, root / "logs" / f"{host}.log")
            # Its own network namespace and its own hostname: Celery names it segq-cpu@host-N.
            svc.spawn(["ip", "netns", "exec", ns, "unshare", "--uts", "--", "sh", "-c",
                       f'hostname {host} && exec "$0" -m producer worker --gpus cpu --threads 1 --models semantic',
                       sys.executable], env={**os.environ, **env})
            workers.append(svc)
        client = redis.Redis.from_url(r.url, decode_responses=True)
        deadline = time.monotonic() + 240
        for host, svc in zip(HOSTS, workers):
            while client.hget(keys.worker(f"segq-cpu@{host}"), "models") in (None, "[]"):
                assert svc.running, svc.log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{host} did not start"
                time.sleep(0.3)
        yield env
    finally:
        for svc in workers:
            svc.stop()
        s3.stop()
        r.stop()


def test_workers_on_three_network_hosts_share_one_queue(remote_stack, tmp_path, monkeypatch):
    from producer.client import Client
    from segq.settings import Settings

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, remote_stack[name])  # boto3 reads them when the client is made
    client = Client(Settings.from_env({**remote_stack}))
    used, _, _ = workers_of_a_mixed_batch(client, tmp_path)
    assert used == {f"segq-cpu@{h}" for h in HOSTS}

    listed = json.loads(segq("workers", "--json", "--timeout", "5", env=remote_stack).stdout)
    assert {w["hostname"] for w in listed} == {f"segq-cpu@{h}" for h in HOSTS}
    assert all(w["responding"] for w in listed)
