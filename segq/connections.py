"""How segq talks to Redis: the one home of its Redis plumbing.

Every segq client of Redis (the producer, the workers' job records, registry, leases and
scheduler, the exporter, the stack's readiness checks) gets its client from :func:`redis_client`,
and Celery its broker configuration from :func:`celery_broker`; both read the same
``SEGQ_REDIS_URL``:

- ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix:///path?db=0``): one server;
- ``sentinel://[:password@]host:port[,host:port...]/db?master=NAME``: Redis Sentinel. The
  Sentinels (at least one reachable) name the current primary of ``NAME``; every connection asks
  them again after a failover, so a client follows the primary. The password is used for the
  Sentinels and for the data nodes alike (``requirepass`` and ``sentinel auth-pass``);
  ``sentinels+tls`` is not supported.

Patience: a client rides out a short outage (a Redis restart, a failover) by reconnecting with
exponential backoff (:data:`RETRY_ATTEMPTS` attempts, up to :data:`RETRY_CAP_SECONDS` apart:
about half a minute in all) before a command raises, instead of failing at the first refused
connection. Longer outages are the callers' to wait out (the task skeleton, ``segq wait``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from segq.errors import ConfigError

#: Reconnection attempts of a patient client before a command raises, and their backoff.
RETRY_ATTEMPTS = 10
RETRY_BASE_SECONDS = 0.25
RETRY_CAP_SECONDS = 4.0
SCHEMES = ("redis", "rediss", "unix", "sentinel")
DEFAULT_SENTINEL_PORT = 26379

#: The errors that mean "Redis is not reachable right now" (as opposed to a refused command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``SEGQ_REDIS_URL``."""

    url: str
    scheme: str
    password: str | None = None
    username: str | None = None
    db: int = 0
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    options: dict = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"


def parse(url: str) -> RedisTarget:
    """``SEGQ_REDIS_URL`` -> :class:`RedisTarget`; ConfigError naming what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError("SEGQ_REDIS_URL: not a URL") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError("SEGQ_REDIS_URL: expected a redis://, rediss://, unix:// or sentinel:// URL")
    if parts.scheme != "sentinel":
        return RedisTarget(url, parts.scheme)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ConfigError("SEGQ_REDIS_URL: a sentinel:// URL needs host:port[,host:port...]")
        try:
            sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise ConfigError("SEGQ_REDIS_URL: a Sentinel's port must be a number") from None
    query = parse_qs(parts.query)
    master = (query.get("master") or [""])[0]
    if not master:
        raise ConfigError("SEGQ_REDIS_URL: a sentinel:// URL needs ?master=NAME (the monitored primary's name)")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ConfigError("SEGQ_REDIS_URL: the database after the hosts must be a number") from None
    return RedisTarget(url, "sentinel", password=unquote(password) or None, username=unquote(username) or None,
                       db=db, sentinels=tuple(sentinels), master=master)


def _patience() -> dict:
    return {"retry": Retry(ExponentialBackoff(cap=RETRY_CAP_SECONDS, base=RETRY_BASE_SECONDS), RETRY_ATTEMPTS),
            "retry_on_error": list(UNREACHABLE)}


def redis_client(url: str, *, patient: bool = True, decode_responses: bool = True,
                 timeout: float | None = None) -> redis.Redis:
    """A Redis client for ``url`` (module docstring). ``patient``: ride out short outages;
    ``timeout``: socket connect/read timeout in seconds (None: block, as BRPOP-free clients may)."""
    options: dict = {"decode_responses": decode_responses, "health_check_interval": 30, "socket_keepalive": True}
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    if patient:
        options.update(_patience())
    target = parse(url)
    if not target.is_sentinel:
        return redis.Redis.from_url(url, **options)
    auth = {k: v for k, v in (("password", target.password), ("username", target.username)) if v}
    sentinel_kwargs = {**auth, "socket_timeout": timeout or 5.0, "socket_connect_timeout": timeout or 5.0}
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **auth, db=target.db, **options)
    return manager.master_for(target.master, connection_class=_FollowingConnection)


class _FollowingConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, made to ask the Sentinels on every reconnect.

    redis-py (8.1) asks them in ``connect``, but a connection that breaks in the middle of a
    command reconnects from inside the command's retry (``send_packed_command`` ->
    ``connect_check_health``), to the address it last had, with the whole retry budget: after a
    failover a worker's heartbeat kept knocking at the dead primary for half a minute while the
    Sentinels named the new one, and its leases expired meanwhile. Here that reconnect goes
    through ``connect`` (each attempt asks the Sentinels; the connect itself one try)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True):
        if self._sock or not retry_socket_connect:  # connected, or ``connect_to``'s own try
            return super().connect_check_health(check_health=check_health, retry_socket_connect=False)
        return self.connect()


def celery_broker(url: str) -> tuple[str, dict]:
    """Celery's ``broker_url`` and the transport options it needs for ``url``: the URL itself for
    one server; for Sentinel, kombu's ``sentinel://host:port;sentinel://...`` form with the master's
    name and the Sentinels' password in the transport options."""
    target = parse(url)
    if not target.is_sentinel:
        return url, {}
    auth = f":{target.password}@" if target.password else ""
    broker = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels)
    options: dict = {"master_name": target.master}
    if target.password:
        options["sentinel_kwargs"] = {"password": target.password}
    return broker, options
