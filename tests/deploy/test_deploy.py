"""The deployment files under deploy/, validated offline: no Docker engine, cluster or server.

- the Compose file against the Compose specification's JSON schema (check-jsonschema's vendored
  copy), plus what segq needs from it: GPU reservation, scalable workers, health checks, graceful
  stop, a persistent password-protected Redis that never evicts, Flower behind basic auth on
  loopback only;
- the Kustomize output (``kubectl kustomize``) against the Kubernetes API schemas
  (kubernetes-validate, strict), plus the KEDA ScaledObject against segq's own queue names, the
  worker's GPU, probes and grace period, and every Secret/ConfigMap/env reference;
- the Dockerfiles (bases, non-root users, what they copy and run) and the Grafana dashboard;
- every ``segq`` command these files run exists in the CLI, and every ``SEGQ_*`` variable they
  name is a documented setting.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from segq import defaults
from segq.protocol import model_queue
from segq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_DIR = DEPLOY / "k8s"
DOCKER_DIR = DEPLOY / "docker"
DASHBOARD = DEPLOY / "grafana" / "segq-dashboard.json"

HEALTH_ARGV = ["segq", "health", "--local"]
WORKER_ARGV = ["segq", "worker", "--gpus", "all"]
DEFAULT_QUEUES = {model_queue(name) for name in defaults.TASK_MODELS.values()}
#: SEGQ_* variables allowed without being in segq/settings.py's docstring: the exporter's secret,
#: which only the exporter and its probe read (never part of the settings, which are printed).
EXTRA_SEGQ_VARIABLES: set[str] = {"SEGQ_EXPORTER_AUTH"}
PROBE_ARGV = ["segq", "exporter", "--probe"]
#: The metrics `segq exporter` serves.
EXPORTER_METRICS = {
    "segq_queue_depth", "segq_jobs_total", "segq_frames_processed_total", "segq_inference_seconds_total",
    "segq_job_fps", "segq_model_load_seconds", "segq_workers", "segq_pending_tasks", "segq_batch_jobs",
    "segq_in_flight_tasks", "segq_dead_letters", "segq_watchdog_resent_total", "segq_job_latency_seconds_bucket",
    "segq_stage_seconds_bucket",
}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def duration_seconds(value: str) -> float:
    """A Compose duration (``10m``, ``1h30m``, ``90s``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a Compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def argv_of(value) -> list[str]:
    """A Compose command / entrypoint / healthcheck test as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def documented_settings() -> set[str]:
    """The SEGQ_* variables a deployment configures: the fields of segq.settings.Settings (and
    SEGQ_ENV_FILE), less those `segq worker` sets per process from its own options."""
    from segq.settings import variables

    return {v.name for v in variables() if v.side != "launcher"}


def deploy_text_files() -> list[Path]:
    files = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            try:
                path.read_text()
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


# --- Dockerfiles ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"{path}: dangling line continuation"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, and the instructions of each stage (the first is its FROM)."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([(instruction, args)])
        elif not stages:
            assert instruction == "ARG", f"{path}: {instruction} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].append((instruction, args))
    return global_args, stages


def stage_args(path: Path) -> dict[str, str]:
    """Every ARG default of the Dockerfile (global and per stage)."""
    out = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            out[name] = default.strip('"')
    return out


def resolved_args(path: Path, args: str) -> str:
    """An instruction's arguments with ${ARG} replaced by the ARG defaults."""
    defaults_ = stage_args(path)
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults_.get(m.group(1), m.group(0)), args)


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: the JSON (exec) form, or the shell form's words."""
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def final_stage(path: Path) -> tuple[str, list[tuple[str, str]]]:
    global_args, stages = dockerfile_stages(path)
    base = stages[-1][0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
    return base, stages[-1]


def dockerignore_excludes(patterns: list[str], relpath: str) -> bool:
    """Whether .dockerignore ``patterns`` exclude ``relpath`` (last match wins; a pattern that
    matches a parent directory matches everything below it)."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


# --- Compose -------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    return services[name]


def published_ports(svc: dict) -> list[tuple[str | None, str]]:
    """(host IP, container port) of every published port, short or long syntax."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("target"))))
            continue
        # [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]; the host port may be ${VAR:-default}.
        text = re.sub(r"\$\{[^}]*\}", "HOSTPORT", str(port))
        fields = text.split(":")
        host_ip = fields[0] if len(fields) == 3 else None
        out.append((host_ip, fields[-1].split("/")[0]))
    return out


def environment_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def interpolated_variables(value) -> set[str]:
    """The variables Compose interpolates in a parsed Compose document (keys and values)."""
    if isinstance(value, dict):
        return set().union(set(), *(interpolated_variables(k) | interpolated_variables(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(interpolated_variables(v) for v in value))
    if not isinstance(value, str):
        return set()
    text = value.replace("$$", "")  # escaped dollars are not interpolated
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def env_file_keys(path: Path) -> list[str]:
    keys = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "=" in line, f"{path.name}: not KEY=value: {line!r}"
            keys.append(line.split("=", 1)[0].strip())
    return keys


# --- Kubernetes ----------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def rendered_text() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: it renders deploy/k8s (kubectl kustomize) offline")
    result = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize deploy/k8s failed:\n{result.stderr}"
    return result.stdout


def rendered() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered_text()) if doc]


def objects(kind: str) -> list[dict]:
    return [o for o in rendered() if o["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict:
    found = [o for o in objects(kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def is_builtin(api_version: str) -> bool:
    """Kubernetes' own API groups (core, apps, networking.k8s.io, ...), not CRDs like keda.sh."""
    if "/" not in api_version:
        return True
    group = api_version.split("/")[0]
    return "." not in group or group.endswith(".k8s.io")


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def workloads() -> list[dict]:
    return [o for o in rendered() if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str | None = None) -> dict:
    containers = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def workload_running(argv_prefix: list[str]) -> dict:
    """The one workload whose container runs a command line starting with ``argv_prefix``."""
    found = []
    for w in workloads():
        for c in pod_spec(w)["containers"]:
            if (c.get("command", []) + c.get("args", []))[: len(argv_prefix)] == argv_prefix:
                found.append(w)
    assert len(found) == 1, f"expected one workload running {' '.join(argv_prefix)}, found {len(found)}"
    return found[0]


# --- segq invocations ----------------------------------------------------------------------------


#: Words after which the next word is a command (``tini -- segq``, ``... && segq``).
COMMAND_SEPARATORS = {"--", "&&", "||", ";", "|", "exec", "then", "do", "else"}


def segq_invocations_in_argv(argv: list[str]) -> list[list[str]]:
    """Every ``segq ...`` command line inside an argv (or a shell command split into words)."""
    found = []
    for i, word in enumerate(argv):
        if word.rsplit("/", 1)[-1] != "segq":
            continue
        # At command position only: not `useradd ... segq` (a user name) or `-n segq`.
        if i > 0 and not word.endswith("/bin/segq") and argv[i - 1] not in COMMAND_SEPARATORS:
            continue
        rest = []
        for w in argv[i + 1:]:
            if w in ("&&", "||", ";", "|"):
                break
            rest.append(w)
        found.append(rest)
        # A shell string in the argv (sh -c "...") is scanned by the caller.
    return found


def _scan_value(value, source: str, out: list[tuple[str, list[str]]]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _scan_value(v, source, out)
    elif isinstance(value, list):
        if all(isinstance(v, (str, int, float)) for v in value):
            words = [str(v) for v in value]
            out += [(source, inv) for inv in segq_invocations_in_argv(words)]
        for v in value:
            _scan_value(v, source, out)
    elif isinstance(value, str) and "segq" in value and " " in value:
        try:
            words = shlex.split(value)
        except ValueError:
            return
        if len(words) > 1:
            out += [(source, inv) for inv in segq_invocations_in_argv(words)]


@lru_cache(maxsize=None)
def segq_invocations() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(file, arguments after ``segq``) for every segq command line in the Dockerfiles, the
    Compose file and the Kubernetes manifests."""
    out: list[tuple[str, list[str]]] = []
    for dockerfile in sorted(DOCKER_DIR.glob("Dockerfile*")):
        if dockerfile.suffix == ".dockerignore":
            continue
        for instruction, args in dockerfile_instructions(dockerfile):
            if instruction in ("CMD", "ENTRYPOINT", "RUN", "HEALTHCHECK"):
                if instruction == "HEALTHCHECK":
                    args = args[args.index("CMD") + 3:].strip() if "CMD" in args else ""
                words = exec_form(args) if args else []
                out += [(dockerfile.name, inv) for inv in segq_invocations_in_argv(words)]
    _scan_value(compose(), "compose.yaml", out)
    for manifest in sorted(K8S_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            _scan_value(doc, f"k8s/{manifest.name}", out)
    # One invocation per distinct command line; dedupe while keeping the first source.
    seen: dict[tuple[str, ...], str] = {}
    for source, inv in out:
        seen.setdefault(tuple(inv), source)
    return tuple((source, inv) for inv, source in seen.items())


def command_path(args: tuple[str, ...]) -> list[str]:
    """The subcommand words of ``segq ARGS`` (``models list`` -> [models, list])."""
    from producer.cli import cli

    path, group = [], cli
    for word in args:
        if word.startswith("-") or not isinstance(group, click.Group):
            break
        path.append(word)
        group = group.commands.get(word)
        if group is None:
            break
    return path


# ================================================================================================
# Compose
# ================================================================================================


def test_compose_file_validates_against_the_compose_spec_schema():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_rejects_a_broken_file(tmp_path):
    """The schema check is live: a misspelled key and a wrongly typed value fail it."""
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["stop_grace_periode"] = "10m"
    broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "stop_grace_periode" in result.stdout + result.stderr


def test_compose_worker_reserves_the_gpus_and_can_be_scaled():
    worker = service("worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and str(d.get("count")) == "all" and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    # `docker compose up --scale worker=N`: nothing that must be unique per container.
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports"), "workers publish no ports (replicas would collide)"
    assert argv_of(worker.get("command")) == WORKER_ARGV


def test_compose_worker_health_check_and_graceful_stop():
    worker = service("worker")
    test = argv_of(worker["healthcheck"]["test"])
    assert test[0] in ("CMD", "CMD-SHELL")
    words = test[1:] if test[0] == "CMD" else shlex.split(test[1])
    assert words == HEALTH_ARGV
    # Model download + load take minutes: the healthcheck must not fail the container meanwhile.
    assert duration_seconds(worker["healthcheck"]["start_period"]) >= 300
    # SIGTERM -> Celery warm shutdown; a video chunk can take minutes.
    assert duration_seconds(worker["stop_grace_period"]) >= 600
    # The Hugging Face cache is a volume, so models download once.
    env = environment_of(worker)
    hf_home = env.get("HF_HOME", "/models")
    assert any(str(v).split(":")[1] == hf_home for v in worker["volumes"] if isinstance(v, str))


def test_no_compose_service_has_a_fixed_container_name():
    assert [n for n, s in compose()["services"].items() if "container_name" in s] == []


def test_every_published_port_is_bound_to_loopback_only():
    for name, svc in compose()["services"].items():
        for host_ip, target in published_ports(svc):
            assert host_ip == "127.0.0.1", f"service {name}: port {target} is published on all interfaces"


def test_compose_redis_is_persistent_password_protected_and_never_evicts():
    redis = service("redis")
    command = " ".join(argv_of(redis["command"]))
    assert re.search(r"--appendonly\s+yes\b", command)
    assert re.search(r"--maxmemory-policy\s+noeviction\b", command)
    assert any(str(v).endswith(":/data") for v in redis["volumes"]), "Redis data must be on a volume"
    # The password comes from a config file, never the command line (`ps` shows it to everyone).
    assert "REDIS_PASSWORD" not in command and "requirepass" not in command
    [config] = [c for c in redis["configs"] if c["target"] in command.split()]
    content = compose()["configs"][config["source"]]["content"]
    assert re.search(r"^requirepass \$\{REDIS_PASSWORD:\?[^}]+\}$", content.strip())


def test_compose_seaweedfs_serves_only_s3_with_jwt_security():
    s3 = service("s3")
    command = argv_of(s3["command"])
    assert "-disableHttp" in command and "-s3.config=/etc/seaweedfs/s3.json" in command
    targets = {c["target"]: c["source"] for c in s3["configs"]}
    security = compose()["configs"][targets["/etc/seaweedfs/security.toml"]]["content"]
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        assert f"[{section}]" in security
    assert security.count("${SEAWEEDFS_JWT_KEY:?") == 4
    assert [target for _, target in published_ports(s3)] == ["8333"], "only the S3 port is published"


def test_compose_flower_has_basic_auth_and_listens_on_loopback_only():
    flower = service("flower")
    words = argv_of(flower["command"])
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(words[2])
    words = [w.replace("$$", "$") for w in words if w != "exec"]  # $$ is Compose's escaped $
    assert words[0] == "celery" and "flower" in words and words[words.index("-A") + 1] == "producer.flower_app"
    # No secret on the command line: the broker (with its password) comes from the environment.
    assert "--broker" not in words and not any("REDIS" in w or "@" in w or "auth" in w for w in words)
    assert "${REDIS_PASSWORD" in environment_of(flower)["SEGQ_REDIS_URL"]
    auth = environment_of(flower).get("FLOWER_BASIC_AUTH", "")
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth), "basic auth from .env, required"
    ports = published_ports(flower)
    assert ports and all(ip == "127.0.0.1" for ip, _ in ports)
    assert "5555" in {target for _, target in ports}


def test_compose_segq_services_share_the_settings_and_reach_redis_with_its_password():
    documented = documented_settings() - {"SEGQ_ENV_FILE"}
    for name in ("worker", "flower", "exporter", "segq", "s3-init"):
        env = environment_of(service(name))
        missing = documented - set(env)
        assert not missing, f"service {name} does not pass {sorted(missing)}"
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD(:\?[^}]*)?\}@redis:6379/\d+", env["SEGQ_REDIS_URL"])
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    worker_env = environment_of(service("worker"))
    assert {"SEGQ_PRECISION", "SEGQ_IMAGE_PROCESSOR", "SEGQ_POSTPROCESS", "SEGQ_COMPILE"} <= set(worker_env)


def test_compose_exporter_asks_for_basic_auth_and_its_health_check_sends_it():
    from producer.exporter import AUTH_VARIABLE

    assert AUTH_VARIABLE in EXTRA_SEGQ_VARIABLES
    exporter = service("exporter")
    words = argv_of(exporter["command"])
    assert words[:2] == ["segq", "exporter"] and not any("$" in w or "auth" in w.lower() for w in words)
    auth = environment_of(exporter).get(AUTH_VARIABLE, "")
    assert re.fullmatch(r"\$\{EXPORTER_AUTH:\?[^}]+\}", auth), "basic auth from .env, required"
    # The health check authenticates with the same variable, so it carries no secret itself.
    test = argv_of(exporter["healthcheck"]["test"])
    assert test[0] == "CMD" and test[1:4] == PROBE_ARGV and "$" not in " ".join(test)
    port = test[test.index("--port") + 1]
    assert port == words[words.index("--port") + 1]
    assert {target for _, target in published_ports(exporter)} == {port}


def test_compose_tools_service_runs_the_cli_on_demand():
    tools = service("segq")
    assert tools.get("profiles") == ["tools"]
    assert argv_of(tools["entrypoint"])[-1] == "segq"
    exporter = service("exporter")
    assert argv_of(exporter["command"])[:2] == ["segq", "exporter"]


def test_compose_builds_from_the_deploy_dockerfiles():
    for name, svc in compose()["services"].items():
        if "build" not in svc:
            continue
        context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
        assert context == ROOT, f"service {name}: build context must be the repository root"
        assert (context / svc["build"]["dockerfile"]).is_file()
    assert service("worker")["build"]["dockerfile"].endswith("Dockerfile.worker")
    assert service("flower")["build"]["dockerfile"].endswith("Dockerfile.producer")
    for name, cfg in compose().get("configs", {}).items():
        if "file" in cfg:
            assert (COMPOSE_DIR / cfg["file"]).is_file(), f"config {name}: missing {cfg['file']}"


def test_env_example_lists_exactly_the_variables_compose_uses():
    used = interpolated_variables(compose())
    listed = env_file_keys(ENV_EXAMPLE)
    assert len(listed) == len(set(listed)), "duplicate keys in .env.example"
    assert used - set(listed) == set(), "used in compose.yaml but not in .env.example"
    assert set(listed) - used == set(), "listed in .env.example but unused by compose.yaml"


# ================================================================================================
# Kubernetes
# ================================================================================================


def test_kustomize_renders_and_every_builtin_object_validates():
    version = kubernetes_validate.latest_version()
    validated, custom = set(), set()
    for obj in rendered():
        if is_builtin(obj["apiVersion"]):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {exc}")
            validated.add(obj["kind"])
        else:
            custom.add((obj["apiVersion"], obj["kind"]))
    assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "NetworkPolicy"} <= validated
    # Nothing else escapes schema validation.
    assert custom == {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}


def test_the_kubernetes_validator_rejects_a_broken_deployment():
    """The schema check is live: a misspelled field and a wrongly typed value fail it."""
    version = kubernetes_validate.latest_version()
    worker = workload_running(WORKER_ARGV)
    misspelled = copy.deepcopy(worker)
    container(misspelled)["livenesProbe"] = container(misspelled).pop("livenessProbe")
    wrong_type = copy.deepcopy(worker)
    pod_spec(wrong_type)["terminationGracePeriodSeconds"] = "600"
    for broken in (misspelled, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_everything_lives_in_the_kustomization_namespace():
    namespace = one("Namespace")["metadata"]["name"]
    for obj in rendered():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"


def test_worker_deployment_gpu_probes_grace_period_and_security():
    worker = workload_running(WORKER_ARGV)
    assert worker["kind"] == "Deployment"
    # KEDA owns the replica count; a fixed `replicas` would fight it on every apply.
    assert "replicas" not in worker["spec"]
    spec, c = pod_spec(worker), container(worker)
    assert c.get("command") is None, "keep the image's tini entrypoint: set args only"
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    if "nvidia.com/gpu" in c["resources"].get("requests", {}):
        assert str(c["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert spec["terminationGracePeriodSeconds"] >= 600
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"] == HEALTH_ARGV, probe
        assert c[probe].get("timeoutSeconds", 1) >= 10, f"{probe}: the CLI needs more than the 1 s default"
    # Model loading takes minutes: the startup probe must allow for it.
    startup = c["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 600
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # HF_HOME (from the ConfigMap) is a mounted volume.
    hf_home = one("ConfigMap", "segq-config")["data"]["HF_HOME"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert hf_home in mounts
    assert mounts[hf_home] in {v["name"] for v in spec["volumes"]}


def test_keda_scales_the_worker_deployment_on_every_default_model_queue():
    worker = workload_running(WORKER_ARGV)
    scaled = one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == worker["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    triggers = scaled["spec"]["triggers"]
    # segq keeps a model's queue short (work waits in its batches until a slot frees), so the
    # workers scale on each model's backlog, served by the exporter, not on the queue's length
    assert {t["type"] for t in triggers} == {"metrics-api"}
    models = [trigger_model(t) for t in triggers]
    assert len(models) == len(set(models))
    assert {model_queue(m) for m in models} == DEFAULT_QUEUES
    assert scaled["spec"]["minReplicaCount"] in (0, 1)
    assert scaled["spec"]["maxReplicaCount"] >= 2
    assert scaled["spec"]["cooldownPeriod"] >= 300
    for trigger in triggers:
        metadata = trigger["metadata"]
        # KEDA's trigger metadata is map[string]string: numbers must be quoted.
        assert all(isinstance(v, str) for v in metadata.values()), metadata
        assert int(metadata["targetValue"]) >= 1 and metadata["valueLocation"] == "backlog"


def trigger_model(trigger: dict) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(trigger["metadata"]["url"]).query)["model"][0]


def test_keda_reads_the_backlog_from_the_exporter_service():
    from urllib.parse import urlsplit

    namespace = one("Namespace")["metadata"]["name"]
    exporter = one("Service", "segq-exporter")
    port = exporter["spec"]["ports"][0]["port"]
    for trigger in one("ScaledObject")["spec"]["triggers"]:
        url = urlsplit(trigger["metadata"]["url"])
        # The KEDA operator runs in its own namespace: the address must be fully qualified.
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "http", f"segq-exporter.{namespace}.svc.cluster.local", port, "/backlog")
    # and what it reads is what the exporter serves: the backlog endpoint exists with that field
    from producer import exporter as exporter_module

    assert "/backlog" in exporter_module.app.__doc__ and "backlog" in exporter_module.backlog.__doc__


def test_configmap_settings_parse_and_match_the_keda_queues():
    data = one("ConfigMap", "segq-config")["data"]
    documented = documented_settings() - {"SEGQ_ENV_FILE", "SEGQ_REDIS_URL"}
    assert documented - set(data) == set(), "settings missing from the ConfigMap"
    settings = Settings.from_env(environ=data)  # the real parser: raises on bad values
    served = sorted(set(settings.task_models.values()) & set(settings.models))
    assert {model_queue(m) for m in served} == DEFAULT_QUEUES
    triggers = {trigger_model(t) for t in one("ScaledObject")["spec"]["triggers"]}
    assert triggers == set(served)


def test_every_env_reference_resolves():
    """Secrets, ConfigMaps and keys referenced by containers exist (unless optional), and every
    $(VAR) in env values and args names a variable defined before it."""
    data = {("Secret", o["metadata"]["name"]): set(o.get("stringData", {})) | set(o.get("data", {}))
            for o in objects("Secret")}
    data |= {("ConfigMap", o["metadata"]["name"]): set(o.get("data", {})) for o in objects("ConfigMap")}
    for w in workloads():
        for c in pod_spec(w)["containers"]:
            where = f"{w['kind']}/{w['metadata']['name']}/{c['name']}"
            defined: set[str] = set()
            for source in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        ref = source[key]
                        if (kind, ref["name"]) not in data:
                            assert ref.get("optional"), f"{where}: no {kind} {ref['name']}"
                            continue
                        defined |= data[(kind, ref["name"])]
            for var in c.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = var.get("valueFrom", {}).get(key)
                    if ref and not ref.get("optional"):
                        assert ref["key"] in data.get((kind, ref["name"]), set()), \
                            f"{where}: {var['name']} -> {kind} {ref['name']}/{ref['key']} does not exist"
                for name in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    assert name in defined, f"{where}: {var['name']} uses $({name}) before it is defined"
                defined.add(var["name"])
            for arg in c.get("command", []) + c.get("args", []):
                for name in re.findall(r"\$\((\w+)\)", arg):
                    assert name in defined, f"{where}: args use undefined $({name})"


def test_segq_redis_url_is_built_from_the_password_secret():
    redis_service = one("Service", "redis")
    port = redis_service["spec"]["ports"][0]["port"]
    for w in workloads():
        for c in pod_spec(w)["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            if "SEGQ_REDIS_URL" not in env:
                continue
            assert env["SEGQ_REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@redis:{port}/0"
            ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "segq-redis"
    users = [w["metadata"]["name"] for w in workloads()
             if any("SEGQ_REDIS_URL" in {e["name"] for e in c.get("env", [])} for c in pod_spec(w)["containers"])]
    assert sorted(users) == ["flower", "segq-exporter", "segq-worker"]


def test_services_select_pods_and_name_their_ports():
    for svc in objects("Service"):
        selector = svc["spec"]["selector"]
        matches = [w for w in workloads()
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} workloads"
        port_names = {p.get("name") for c in pod_spec(matches[0])["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str):
                assert port["targetPort"] in port_names
        # Nothing is exposed outside the cluster.
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert objects("Ingress") == []


def test_k8s_redis_is_persistent_password_protected_and_never_evicts():
    redis = one("StatefulSet", "redis")
    c = container(redis)
    args = " ".join(c.get("command", []) + c.get("args", []))
    assert re.search(r"--appendonly\s+yes\b", args)
    assert re.search(r"--maxmemory-policy\s+noeviction\b", args)
    # The password reaches redis-server through a file: the shell expands $REDIS_PASSWORD (not
    # Kubernetes' $(REDIS_PASSWORD), which would put the value into the argv) and execs.
    assert "$(REDIS_PASSWORD)" not in args and "--requirepass" not in args
    assert "requirepass" in args and "exec redis-server /run/redis/auth.conf" in args
    data_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
    assert data_mount["name"] in {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}


def test_k8s_flower_has_basic_auth_and_is_fenced_in():
    flower = workload_running(["celery", "-A", "producer.flower_app", "flower"])
    c = container(flower)
    argv = c.get("command", []) + c.get("args", [])
    assert "--broker" not in argv and not any("$(" in a for a in argv), "no secret on the command line"
    env = {e["name"]: e for e in c["env"]}
    assert argv[argv.index("-A") + 1] == "producer.flower_app"  # segq's broker settings, SEGQ_REDIS_URL
    assert "$(REDIS_PASSWORD)" in env["SEGQ_REDIS_URL"]["value"]
    assert "secretKeyRef" in env["FLOWER_BASIC_AUTH"]["valueFrom"]
    labels = flower["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in objects("NetworkPolicy")
                if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    assert policies, "a NetworkPolicy must restrict ingress to Flower (its /healthcheck answers anyone)"


def test_k8s_exporter_is_annotated_for_prometheus():
    exporter = workload_running(["segq", "exporter"])
    argv = container(exporter)["args"]
    port = int(argv[argv.index("--port") + 1])
    svc = next(s for s in objects("Service")
               if s["spec"]["selector"].items() <= exporter["spec"]["template"]["metadata"]["labels"].items())
    annotations = svc["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    assert port in {p["port"] for p in svc["spec"]["ports"]}


def test_k8s_exporter_asks_for_basic_auth_and_keda_and_the_probes_send_it():
    from producer.exporter import AUTH_VARIABLE

    exporter = workload_running(["segq", "exporter"])
    c = container(exporter)
    argv = c.get("command", []) + c.get("args", [])
    assert not any("$(" in a for a in argv), "no secret on the command line"
    env = {e["name"]: e for e in c["env"]}
    parts = re.fullmatch(r"\$\((\w+)\):\$\((\w+)\)", env[AUTH_VARIABLE]["value"]).groups()
    refs = [env[name]["valueFrom"]["secretKeyRef"] for name in parts]
    assert [(r["name"], r["key"]) for r in refs] == [("segq-exporter", "username"), ("segq-exporter", "password")]
    port = argv[argv.index("--port") + 1]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "httpGet" not in c[probe], f"{probe}: an httpGet probe is refused without credentials"
        command = c[probe]["exec"]["command"]
        assert command[:3] == PROBE_ARGV and command[command.index("--port") + 1] == port, probe
    # KEDA reads /backlog with the same Secret's keys.
    auths = {o["metadata"]["name"]: o for o in objects("TriggerAuthentication")}
    for trigger in one("ScaledObject")["spec"]["triggers"]:
        assert trigger["metadata"]["authMode"] == "basic"
        auth = auths[trigger["authenticationRef"]["name"]]
        targets = {t["parameter"]: (t["name"], t["key"]) for t in auth["spec"]["secretTargetRef"]}
        assert targets == {"username": ("segq-exporter", "username"), "password": ("segq-exporter", "password")}
    assert {"username", "password"} <= set(one("Secret", "segq-exporter")["stringData"])


def test_secrets_are_placeholders_only():
    for secret in objects("Secret"):
        values = list(secret.get("stringData", {}).values())
        assert values and all("CHANGE-ME" in v for v in values), secret["metadata"]["name"]


# ================================================================================================
# Dockerfiles
# ================================================================================================


def test_worker_image_cuda_base_non_root_model_volume_health_and_command():
    path = DOCKER_DIR / "Dockerfile.worker"
    base, stage = final_stage(path)
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    instructions = dict()
    for instruction, args in stage:
        instructions.setdefault(instruction, []).append(args)
    assert instructions["USER"][-1].split(":")[0] == "10001"
    env = " ".join(instructions["ENV"])
    assert re.search(r"\bHF_HOME=/models\b", env)
    assert "/models" in exec_form(instructions["VOLUME"][-1])
    health = instructions["HEALTHCHECK"][-1]
    assert exec_form(health[health.index("CMD") + 3:].strip()) == HEALTH_ARGV
    assert exec_form(instructions["CMD"][-1]) == WORKER_ARGV
    runs = [resolved_args(path, args) for instruction, args in dockerfile_instructions(path) if instruction == "RUN"]
    torch_at = [i for i, r in enumerate(runs)
                if re.search(r"pip install torch\S* --index-url \"?https://download\.pytorch\.org/whl/cu\d+", r)]
    worker_at = [i for i, r in enumerate(runs) if re.search(r'pip install "?/src\[worker\]', r)]
    assert torch_at and worker_at, "CUDA torch, then segq[worker]"
    assert torch_at[0] < worker_at[0], "install CUDA torch before segq[worker], or pip pulls torch from PyPI"
    python = stage_args(path).get("PYTHON_VERSION")
    assert python and tuple(int(x) for x in python.split(".")[:2]) >= (3, 11)


def test_producer_image_slim_python_non_root_without_torch():
    path = DOCKER_DIR / "Dockerfile.producer"
    base, stage = final_stage(path)
    assert base == "python:3.11-slim"
    users = [args for instruction, args in stage if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    runs = " ".join(resolved_args(path, a) for i, a in dockerfile_instructions(path) if i == "RUN")
    assert re.search(r'pip install "?/src"? ', runs)
    assert "torch" not in runs and "[worker]" not in runs


@pytest.mark.parametrize("name", ["Dockerfile.worker", "Dockerfile.producer"])
def test_docker_copy_sources_exist_and_are_not_ignored(name):
    path = DOCKER_DIR / name
    ignore = DOCKER_DIR / f"{name}.dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    copied = []
    for instruction, args in dockerfile_instructions(path):
        if instruction != "COPY" or "--from=" in args:
            continue
        words = [w for w in exec_form(args) if not w.startswith("--")]
        copied += words[:-1]
    assert {"pyproject.toml", "README.md", "segq", "producer", "workers"} <= set(copied)
    for source in copied:
        src = ROOT / source
        assert src.exists(), f"{name}: COPY {source}: not in the repository"
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if rel.endswith((".pyc", ".pyo")):
                continue
            assert not dockerignore_excludes(patterns, rel), f"{ignore.name} excludes {rel}"
    assert dockerignore_excludes(patterns, ".git/config"), "the allowlist should leave .git out"


# ================================================================================================
# CLI commands and settings named in the deploy files
# ================================================================================================


def test_the_deploy_files_run_the_expected_segq_commands():
    commands = {tuple(command_path(args)) or tuple(args[:1]) for _, args in segq_invocations()}
    assert {("worker",), ("health",), ("exporter",)} <= commands


def test_every_segq_command_in_the_deploy_files_exists():
    from producer.cli import cli

    missing = []
    for source, args in segq_invocations():
        words = [w for w in args if not w.startswith("-")]
        if not words:  # `segq --help`, `segq --version`
            continue
        group = cli
        for word in words:
            if not isinstance(group, click.Group):
                break
            if word not in group.commands:
                missing.append(f"{source}: segq {' '.join(args)} ({word!r} is not a command)")
                break
            group = group.commands[word]
            if not isinstance(group, click.Group):
                break
    assert not missing, "\n".join(missing)


def test_segq_command_lines_in_the_deploy_files_parse():
    """Options and arguments of every existing command are accepted by its click parser."""
    from producer.cli import cli

    for source, args in segq_invocations():
        path = command_path(args)
        if not path:
            continue
        cmd = cli
        for word in path:
            if not isinstance(cmd, click.Group) or word not in cmd.commands:
                cmd = None
                break
            cmd = cmd.commands[word]
        if cmd is None:
            continue  # reported by test_every_segq_command_in_the_deploy_files_exists
        rest = list(args[len(path):])
        try:
            cmd.make_context(" ".join(["segq", *path]), rest)
        except click.exceptions.Exit:
            pass
        except click.ClickException as exc:
            pytest.fail(f"{source}: segq {' '.join(args)}: {exc.format_message()}")


def test_every_segq_variable_in_the_deploy_files_is_a_documented_setting():
    documented = documented_settings()
    assert "SEGQ_REDIS_URL" in documented  # the field list is read
    allowed = documented | EXTRA_SEGQ_VARIABLES
    unknown = {}
    for path in deploy_text_files():
        for name in set(re.findall(r"\bSEGQ_[A-Z0-9_]+\b", path.read_text())) - allowed:
            unknown.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert not unknown, f"SEGQ_* variables not documented in segq/settings.py: {unknown}"


# ================================================================================================
# Grafana
# ================================================================================================


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def _balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def test_grafana_dashboard_is_valid_and_uses_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = dashboard["templating"]["list"]
    ds_vars = [v for v in variables if v["type"] == "datasource" and v["query"] == "prometheus"]
    assert len(ds_vars) == 1
    ds_ref = "${%s}" % ds_vars[0]["name"]
    for var in variables:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == ds_ref
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": ds_ref}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds_ref
            assert _balanced(target["expr"]), f"{panel['title']}: unbalanced {target['expr']!r}"
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(segq_[a-z_]+)\b", e)}
    assert used == EXPORTER_METRICS, f"unknown: {used - EXPORTER_METRICS}, unused: {EXPORTER_METRICS - used}"


def test_grafana_dashboard_has_the_expected_panels():
    panels = _panels(json.loads(DASHBOARD.read_text()))
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels}

    def panel_with(pattern: str) -> str:
        titles = [t for t, e in exprs.items() if re.search(pattern, e, re.S)]
        assert titles, f"no panel with {pattern!r}"
        return titles[0]

    panel_with(r"by \(queue\) \(segq_queue_depth")
    panel_with(r"by \(state\) \(rate\(segq_jobs_total")
    panel_with(r"rate\(segq_frames_processed_total")
    # inference FPS: frames per inference second, both as rates
    panel_with(r"rate\(segq_frames_processed_total[^/]*\)\s*/\s*sum by \(model\) \(rate\(segq_inference_seconds_total")
    panel_with(r"segq_job_fps")
    panel_with(r"segq_model_load_seconds")
    panel_with(r"segq_workers")
    panel_with(r"by \(priority\) \(segq_pending_tasks")
    panel_with(r"segq_batch_jobs")
    panel_with(r"segq_dead_letters")
    panel_with(r"histogram_quantile\(0\.95, sum by \(le, kind\) \(rate\(segq_job_latency_seconds_bucket")
    panel_with(r"histogram_quantile\(0\.95, sum by \(le, stage\) \(rate\(segq_stage_seconds_bucket")
