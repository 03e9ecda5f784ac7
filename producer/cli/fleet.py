"""Fleet commands: ``workers``, ``queues``, ``health``, ``exporter``."""

from __future__ import annotations

import sys

import click

from producer import display
from producer.progress import err, out


def _client():
    from producer.client import Client  # boto3, redis, celery: only for the commands that talk to them

    return Client()


@click.command()
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for remote-control replies.")
@click.option("--json", "as_json", is_flag=True)
def workers(timeout, as_json):
    """Live workers: device, models loaded, current tasks, model stage, jobs done.

    Joins each worker's own record in Redis (refreshed every few seconds, even during long
    tasks) with Celery's remote control (ping, active tasks, totals). A worker runs several tasks
    at once (one per line under "active"); "model busy" is the fraction of the last 30 s its
    model stage ran forward passes, "items" the images and frames it has put through the model,
    "per pass" how many of them ran in one forward pass on average (SEGQ_MAX_BATCH batches them).

    \b
    Example:
      segq workers --json | jq '.[] | {hostname, device, active}'
    """
    from producer import fleet

    client = _client()
    views = fleet.workers(client.settings, client.records.r, client.celery, timeout=timeout)
    if as_json:
        display.print_json(out, [v.to_dict() for v in views])
        return
    if not views:
        err.print("no live worker")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("worker", "device", "models", "active", "model busy", "items", "per pass", "jobs done", "failed",
                "tasks", "heartbeat", "control"):
        table.add_column(col)
    for v in views:
        control = "-" if v.responding is None else ("answers" if v.responding else "[yellow]busy[/]")
        table.add_row(v.hostname, v.device, ", ".join(v.models), "\n".join(v.active_tasks) or "idle",
                      f"{v.model_busy:.0%}" if v.model_busy is not None else "-", str(v.model_items),
                      f"{v.items_per_pass:.1f}" if v.items_per_pass else "-",
                      str(v.jobs_done), str(v.jobs_failed), str(v.tasks_done),
                      f"{v.heartbeat_age:.0f}s ago" if v.heartbeat_age is not None else "-", control)
    out.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def queues(as_json):
    """Messages waiting in each queue (one per model), messages held by workers (unacknowledged:
    running, reserved, or scheduled for a retry), and the leases on them.

    \b
    Example:
      segq queues --json
    """
    from producer import fleet

    client = _client()
    report = fleet.queue_report(client.settings, client.records.r)
    if as_json:
        display.print_json(out, report)
        return
    out.print(f"{'queue':<36} {'waiting':>8} {'unacked':>8}   pending (high/normal/low)", highlight=False)
    for name, n in report["queues"].items():
        p = n["pending"]
        out.print(f"{name:<36} {n['waiting']:>8} {n['unacked']:>8}   {p['high']}/{p['normal']}/{p['low']}",
                  highlight=False)
    lease = report["leases"]
    out.print(f"in flight: {report['in_flight']} released and not acknowledged; leases: {lease['running']} running, "
              f"{lease['held']} held in all, {lease['of_lost_workers']} of lost workers (requeued by the reaper)",
              highlight=False)
    watchdog = report.get("watchdog", {})
    if watchdog:
        out.print(f"watchdog: {watchdog.get('resent', 0)} lost message(s) sent again, "
                  f"{watchdog.get('gave_up', 0)} job(s) failed for losing them", highlight=False)
    if report.get("dead_letters"):
        out.print(f"[yellow]dead letters: {report['dead_letters']}[/] poison message(s) taken off the queues "
                  f"(segq dead-letters lists them)", highlight=False)


@click.command(name="dead-letters")
@click.option("-n", "--limit", default=20, show_default=True, help="How many, newest first.")
@click.option("--purge", is_flag=True, help="Empty the dead-letter list (after looking at it).")
@click.option("--json", "as_json", is_flag=True)
def dead_letters(limit, purge, as_json):
    """Poison messages taken off the queues: not JSON, not a segq task, a payload that does not
    parse. Each is listed with when, its queue, why, its size and a SHA-256 of its bytes (the
    bytes themselves are never printed). The workers acknowledged them and went on serving.

    \b
    Examples:
      segq dead-letters
      segq dead-letters --json | jq -r '.[].reason' | sort | uniq -c
      segq dead-letters --purge
    """
    from segq import deadletters

    client = _client()
    with client._redis():
        if purge:
            n = deadletters.purge(client.r)
            err.print(f"purged {n} dead letter(s)")
            return
        letters = deadletters.recent(client.r, limit)
        total = deadletters.count(client.r)
    if as_json:
        display.print_json(out, [d.to_dict() for d in letters])
        return
    if not letters:
        err.print("no dead letters")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("when", "queue", "reason", "bytes", "sha256"):
        table.add_column(col)
    for d in letters:
        table.add_row(display.when(d.at), display.plain(d.queue), display.plain(d.reason), str(d.size), d.sha256[:16])
    out.print(table)
    if total > len(letters):
        err.print(f"{len(letters)} of {total} shown (-n for more)")


@click.command()
@click.option("--local", "local", is_flag=True, required=True,
              help="Check the workers of this host (the only mode for now).")
def health(local):
    """Exit 0 when Redis answers and this host's workers have their models loaded.

    For Kubernetes readiness/liveness probes and Docker health checks.

    \b
    Example:
      segq health --local || echo "not ready"
    """
    from producer import fleet
    from segq.connections import redis_client
    from segq.settings import Settings

    settings = Settings.from_env()
    ok, message = fleet.local_health(redis_client(settings.redis_url, patient=False, timeout=5))
    (out if ok else err).print(message, highlight=False)
    sys.exit(0 if ok else 1)


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=9808, show_default=True)
@click.option("--probe", is_flag=True,
              help="Serve nothing: exit 0 if the exporter at --address/--port answers /metrics (with the "
                   "credentials of SEGQ_EXPORTER_AUTH), else 1. For container health checks.")
def exporter(address, port, probe):
    """Serve Prometheus metrics (queues, pending work by priority, batches, jobs by outcome, frames,
    FPS, latency and stage histograms, workers) at /metrics, and each model's backlog (JSON, for
    autoscalers) at /backlog?model=NAME. With SEGQ_EXPORTER_AUTH=user:password in its environment
    every path asks for HTTP basic auth (the secret is read from the environment only, never from
    the command line); without it the exporter serves on a loopback address only.

    \b
    Examples:
      export SEGQ_EXPORTER_AUTH="prom:$(cat ~/.segq/exporter-password)"
      segq exporter --address 0.0.0.0 --port 9808   # scrape with basic_auth
      segq exporter --probe --port 9808             # health check: exit 0 if it answers
    """
    if probe:
        from producer.exporter import probe as probe_exporter

        ok, message = probe_exporter(address, port)
        (out if ok else err).print(display.plain(message))
        sys.exit(0 if ok else 1)
    import os

    from producer.exporter import AUTH_VARIABLE, exposure_error, serve
    from segq.settings import Settings

    auth = os.environ.get(AUTH_VARIABLE) or None
    if problem := exposure_error(address, auth):
        err.print(display.plain(f"error: {problem}"))
        sys.exit(2)
    err.print(display.plain(f"serving metrics on http://{address}:{port}/metrics"
                            + ("" if auth else " (no credentials: loopback only)")))
    serve(Settings.from_env(), address, port, auth)


COMMANDS = (workers, queues, dead_letters, health, exporter)
