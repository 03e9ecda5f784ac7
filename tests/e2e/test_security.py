"""The stack is locked down: only the S3 API, with credentials, serves data; no secret is on any
command line; s3:// inputs only from allowed prefixes; local inputs must be images or videos."""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

from segq import layout
from segq.protocol import SEGMENT_SHARD, model_queue, new_job_id, shard_task_id
from segq.storage import S3Object

from support.cli import segq
from support.media import photo
from support.fleet import lone_shard

pytestmark = pytest.mark.e2e

# Status pages SeaweedFS serves unconditionally: the master's (GET / and /ui/index.html: cluster
# topology, volume ids and sizes) and the volume server's and S3 gateway's GET /status (version,
# volume counters, collection = bucket names). No object names, no data; they are the only anonymous answers.
MASTER_STATUS_PATHS = {"/", "/ui/index.html"}
STATUS_PATHS = {"/status"}


def listening_ports(pid: int) -> list[int]:
    return sorted({c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN})


def anonymous(host: str, port: int, method: str, path: str, body: bytes | None = None) -> tuple[object, bytes]:
    """(status, body) of a request without credentials, or (exception name, b"") when the port
    does not speak HTTP/1.1 to strangers (gRPC ports reset the connection)."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, b""
    finally:
        conn.close()


def test_every_seaweedfs_port_refuses_anonymous_requests_and_s3_with_credentials_works(client, s3_server):
    bucket = s3_server.bucket
    key = f"inputs/{new_job_id()}/secret.txt"
    secret = b"top secret " + uuid.uuid4().hex.encode()
    client.storage.put_bytes(key, secret, "text/plain")
    other = "other-" + uuid.uuid4().hex[:8]
    client.storage.client.create_bucket(Bucket=other)
    client.storage.client.put_object(Bucket=other, Key="x.txt", Body=secret)

    ports = listening_ports(s3_server.proc.pid)
    assert s3_server.ports["s3"] in ports and len(ports) >= 5, ports
    assert s3_server.ports.get("webdav") not in ports  # WebDAV is off
    requests = [
        ("GET", "/", None), ("GET", "/ui/index.html", None),
        ("GET", f"/buckets/{bucket}/", None), ("GET", f"/buckets/{bucket}/{key}", None),
        ("GET", f"/{bucket}/{key}", None), ("GET", f"/{bucket}?list-type=2", None),
        ("GET", f"/buckets/{other}/x.txt", None), ("GET", f"/{other}/x.txt", None),
        ("GET", "/dir/assign", None), ("GET", "/dir/status", None), ("GET", "/vol/status", None),
        ("GET", "/status", None), ("GET", "/api/s3/buckets", None),
        ("PUT", f"/buckets/{bucket}/{key}", b"overwritten"), ("PUT", f"/{bucket}/{key}", b"overwritten"),
        ("POST", f"/buckets/{bucket}/inputs/new.txt", b"new"), ("PUT", f"/{bucket}/inputs/new.txt", b"new"),
        ("DELETE", f"/buckets/{bucket}/{key}", None), ("DELETE", f"/{bucket}/{key}", None),
        ("DELETE", f"/buckets/{other}/x.txt", None),
    ]
    answered = []
    for port in ports:
        for method, path, body in requests:
            status, content = anonymous(s3_server.host, port, method, path, body)
            assert secret not in content, (port, method, path)  # (error pages may echo the asked path)
            if isinstance(status, int) and status < 400:
                answered.append((port, method, path, status))
    # Nothing answers but the status pages (no data, no object names).
    master = s3_server.ports["master"]
    for port, method, path, _ in answered:
        assert method == "GET" and (path in STATUS_PATHS or (port == master and path in MASTER_STATUS_PATHS)), answered
        _, content = anonymous(s3_server.host, port, method, path)
        # (the volume server's /status names its collections, i.e. bucket names: no keys, no data)
        assert b"secret.txt" not in content and b"inputs/" not in content and secret not in content

    # Nothing was overwritten, created or deleted; the S3 API with credentials works.
    assert client.storage.get_bytes(S3Object(bucket, key)) == secret
    assert client.storage.client.get_object(Bucket=other, Key="x.txt")["Body"].read() == secret
    listed = [o["Key"] for o in client.storage.client.list_objects_v2(Bucket=bucket, Prefix="inputs/new").get("Contents", [])]
    assert listed == []
    # And S3 without credentials (or with wrong ones) refuses.
    status, _ = anonymous(s3_server.host, s3_server.ports["s3"], "GET", f"/{bucket}/{key}")
    assert status == 403


def all_cmdlines() -> list[tuple[int, str]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out.append((int(pid), raw.replace(b"\0", b" ").decode(errors="replace")))
    return out


def test_no_secret_on_any_command_line(redis_server, s3_server, worker, flower, stack_env):
    secrets_ = {
        "redis password": redis_server.password,
        "S3 secret key": s3_server.secret_key,
        "Flower basic auth": "admin:s3cret",
    }
    assert all(len(v) >= 6 for v in secrets_.values())
    leaks = [(pid, what) for pid, line in all_cmdlines() for what, value in secrets_.items() if value in line]
    assert leaks == [], leaks
    # The services are up and still enforce them.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{flower.url}/api/workers", timeout=5)
    assert info.value.code == 401
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=redis_server.host, port=redis_server.port).ping()


def test_a_hand_made_message_naming_a_forbidden_key_fails_without_reading_it(client, worker, redis_client):
    other = new_job_id()
    secret = b'{"frames": 123, "secret": "do not echo"}'
    client.storage.put_bytes(layout.frames_key(other), secret, "application/json")
    key = layout.frames_key(other)
    job_id, batch, shard = lone_shard(client, f"s3://{client.settings.s3_bucket}/{key}")
    client.celery.send_task(SEGMENT_SHARD, kwargs={
        "batch": batch, "shard": f"{shard:06d}", "task": "semantic", "model": "ade-semantic",
    }, queue=model_queue("ade-semantic"), task_id=shard_task_id(batch, shard))
    [record] = client.wait([job_id], timeout=60)
    assert record.state == "failed" and "refused" in record.error and "work files" in record.error
    assert "do not echo" not in record.error and "frames" not in record.error.split("refused")[1]


def test_the_cli_refuses_forbidden_s3_keys_text_named_as_images_and_symlinks_out(client, tmp_path, redis_client):
    before = redis_client.zcard("segq:batches")
    bucket = client.settings.s3_bucket
    for uri in (f"s3://{bucket}/outputs/x/overlay.jpg", f"s3://{bucket}/work/x/frames.json",
                "s3://another-bucket/x.png", f"s3://{bucket}/inputs/../outputs/x/overlay.jpg"):
        result = segq("submit", uri, "--task", "semantic")
        assert result.returncode == 1 and "refused" in result.stderr, (uri, result.stderr)
    (tmp_path / "secret.txt").write_text("password=hunter2\n")
    os.symlink(tmp_path / "secret.txt", tmp_path / "passwd.png")
    result = segq("submit", str(tmp_path / "passwd.png"), "--task", "semantic")
    assert result.returncode == 1 and "not an image or video" in result.stderr
    assert "hunter2" not in result.stderr
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    result = segq("submit", str(empty), "--task", "semantic")
    assert result.returncode == 1 and "empty file" in result.stderr
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.png", (64, 48))
    os.symlink(tmp_path / "secret.txt", folder / "b.png")
    result = segq("submit", str(folder), "--task", "semantic")
    assert result.returncode == 0, result.stderr
    [job_id] = result.stdout.split()
    assert redis_client.zcard("segq:batches") == before + 1
    assert client.status(job_id).source.endswith("a.png")


def test_the_local_stack_asks_for_credentials_on_redis_s3_and_every_flower_page(tmp_path):
    """`segq up` / `segq demo`'s stack (without its worker here): Redis, S3 and Flower (every page,
    /metrics included) refuse anonymous clients; the credentials are in the owner-only env file."""
    import base64
    import stat
    import urllib.error
    import urllib.request

    import redis

    from producer.stack import LocalStack

    with LocalStack(tmp_path / "stack", worker=False) as stack:
        env_file = stack.env_file
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        auth = stack.env()["FLOWER_BASIC_AUTH"]
        assert f"FLOWER_BASIC_AUTH={auth}" in env_file.read_text() and len(auth.split(":", 1)[1]) >= 16
        for path in ("/", "/api/workers", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{stack.flower.url}{path}", timeout=10)
            assert info.value.code == 401, path
        req = urllib.request.Request(f"{stack.flower.url}/metrics",
                                     headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=stack.redis.host, port=stack.redis.port).ping()
        anonymous = http.client.HTTPConnection(stack.s3.host, stack.s3.ports["s3"], timeout=10)
        anonymous.request("GET", f"/{stack.s3.bucket}/")
        assert anonymous.getresponse().status == 403
