"""The local stack's servers pick free loopback ports; another process can take a picked port
before the server binds it (seen in CI: a Sentinel exited with "Address already in use"). The
server then starts on another port; a port the caller chose is never changed."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from producer import stack
from producer.stack import LOOPBACK, RedisServer
from segq.errors import ServiceUnavailable


@pytest.fixture
def taken():
    """A loopback port another process holds (listening) for the test's length."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_server_whose_picked_port_was_taken_starts_on_another(tmp_path, taken, monkeypatch):
    picks = iter([taken])
    real = stack.free_port
    monkeypatch.setattr(stack, "free_port", lambda: next(picks, None) or real())
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path).start()
    try:
        assert server.port != taken
        assert redis.Redis(host=LOOPBACK, port=server.port, password=server.password).ping()
        log = (tmp_path / "redis.log").read_text()
        assert f"127.0.0.1:{taken}: bind: Address already in use" in log  # the first try did lose the race
    finally:
        server.stop()


def test_a_port_the_caller_chose_is_not_changed_when_it_is_taken(tmp_path, taken):
    server = RedisServer("redis", tmp_path / "redis.log", data_dir=tmp_path, port=taken)
    with pytest.raises(ServiceUnavailable, match="exited with code"):
        server.start()
    assert server.port == taken
    server.stop()


def test_seaweedfs_whose_picked_port_was_taken_starts_on_other_ports(tmp_path, taken, monkeypatch):
    """weed checks its ten ports before it starts and exits when one is taken; the stack then
    picks them again, and a squatter that never answers does not stall the start."""
    picks = iter([taken])
    real = stack.free_port
    monkeypatch.setattr(stack, "free_port", lambda: next(picks, None) or real())
    s3 = stack.SeaweedS3("s3", tmp_path / "s3.log", data_dir=tmp_path / "s3")
    started = time.monotonic()
    s3.start()
    try:
        assert taken not in s3.ports.values()
        assert s3.client().head_bucket(Bucket=s3.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
        log = (tmp_path / "s3.log").read_text()
        assert f"port {taken}" in log and "not available" in log  # the first try did lose the race
        assert time.monotonic() - started < 60
    finally:
        s3.stop()


def test_a_seaweedfs_port_the_caller_chose_is_not_changed_and_its_loss_is_told_at_once(tmp_path, taken):
    s3 = stack.SeaweedS3("s3", tmp_path / "s3.log", data_dir=tmp_path / "s3", ports={"s3": taken})
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="exited with code"):
        s3.start()
    assert s3.ports["s3"] == taken and time.monotonic() - started < 30  # its check never hung on the squatter
    s3.stop()
