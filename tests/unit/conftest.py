"""The unit tier's one server: a redis-server for the Lua scripts, started once per module."""

from __future__ import annotations

import pytest

from producer.stack import RedisServer
from segq.connections import redis_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis")
    server = RedisServer("redis", root / "redis.log", data_dir=root).start()
    yield server
    server.stop()


@pytest.fixture()
def r(server):
    """A client of the module's server, on an emptied database."""
    client = redis_client(server.url)
    client.flushdb()
    return client
