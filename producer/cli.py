"""``segq``: queue Mask2Former segmentation jobs, follow them, fetch their outputs.

A thin layer over ``producer.Client``: parsing arguments, printing, exit codes
(``segq.errors`` lists them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segq import __version__
from segq.errors import JobFailed, SegqError
from segq.protocol import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_FRAMES, TASKS

from producer import display

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class SegqGroup(click.Group):
    """Prints SegqError messages and exits with their codes instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SegqError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


def _client():
    from producer.client import Client

    return Client()


def _wait_with_progress(client, ids: list[str], timeout: float | None, quiet: bool) -> list:
    show = not quiet and err.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
        console=err, disable=not show, transient=False,
    ) as progress:
        bar = progress.add_task("jobs", total=len(ids), detail="")

        def update(records):
            # One unit per image; one per frame of a video once its split step has counted them.
            total = completed = 0
            for r in records:
                if r.kind == "video" and r.frames_total:
                    total += r.frames_total
                    completed += r.frames_total if r.final else (r.frames_done or 0)
                else:
                    total += 1
                    completed += 1 if r.final else 0
            failed = sum(r.state == "failed" for r in records)
            running = sum(r.state == "running" for r in records)
            detail = f"{running} running" + (f", [red]{failed} failed[/]" if failed else "")
            videos = [r for r in records if r.kind == "video" and r.frames_total]
            if videos:
                frames = sum(r.frames_done or 0 for r in videos)
                infer = sum(r.inference_s or 0 for r in videos)
                detail += f", frames {frames}/{sum(r.frames_total for r in videos)}"
                if infer:
                    detail += f", {frames / infer:.1f} fps"
            progress.update(bar, total=total, completed=completed,
                            description="frames" if videos and len(records) == 1 else "jobs", detail=detail)

        return client.wait(ids, timeout=timeout, on_progress=update)


def _finish(records, as_json: bool) -> None:
    if as_json:
        display.print_json(out, [display.record_dict(r) for r in records])
    else:
        for r in records:
            line = f"{r.id}  {display.state(r)}"
            if r.state == "done" and r.kind == "video":
                line += (f"  {r.frames_total} frames in {r.chunks_total} chunks, inference {r.fps or 0:.2f} fps, "
                         f"end to end {r.e2e_fps or 0:.2f} fps")
            elif r.state == "done":
                line += f"  inference {display.secs(r.inference_s)}, {r.segments} segments"
            elif r.error:
                line += f"  {r.error}"
            out.print(line, highlight=False)
    failed = [r for r in records if r.state == "failed"]
    if failed:
        raise JobFailed(f"{len(failed)} of {len(records)} jobs failed")


@click.group(cls=SegqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segq")
def cli():
    """Mask2Former segmentation (semantic, instance, panoptic) as a job queue.

    Jobs go to Redis; GPU workers with the models loaded take them, write overlays, label maps
    and segment lists to S3, and record status and FPS in Redis.

    \b
    Quick start (local stack, no GPU or hub access needed):
      segq demo                     start everything, segment a demo image, show outputs
    \b
    With a running fleet (settings come from SEGQ_* variables or .env):
      segq submit street.jpg --task panoptic --wait
      segq submit photos/ --task semantic        # one job per image
      segq wait JOB...  ;  segq status JOB  ;  segq get JOB -o out/

    Exit codes: 0 ok, 1 a job failed or input refused, 2 usage, 3 Redis/S3 unreachable,
    4 no such job, 5 timeout.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-t", "--task", type=click.Choice(TASKS), required=True, help="Segmentation task.")
@click.option("-m", "--model", help="Model name from SEGQ_MODELS (default: the task's model, see `segq models`).")
@click.option("--chunk-frames", type=click.IntRange(1), default=DEFAULT_CHUNK_FRAMES, show_default=True,
              help="Videos: frames per chunk; chunks run on any worker in parallel.")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Videos: frames per forward pass.")
@click.option("--annotate-fps", is_flag=True, help="Videos: write the inference FPS on each frame, as the article does.")
@click.option("-w", "--wait", "wait_", is_flag=True, help="Wait for the jobs; exit 1 if any fails.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 5).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of job ids.")
def submit(paths, task, model, chunk_frames, batch_size, annotate_fps, wait_, timeout, as_json):
    """Queue one job per image or video.

    PATHS are image or video files (recognised by content), directories (every image and video
    inside, recursively), globs ('shots/*.png', quoted) or objects already in storage
    (s3://bucket/key). Local files are uploaded to the segq bucket under the job id. A video is
    split into chunks of --chunk-frames frames that any worker may take; its overlay comes back
    as one H.264 MP4 with every frame, the input's frame rate, size and audio.

    \b
    Examples:
      segq submit street.jpg --task panoptic --wait
      segq submit clip.mp4 --task semantic --chunk-frames 64 --batch-size 8 --wait
      segq submit 'frames/**/*.jpg' --task semantic --json
      segq submit s3://segq/inputs/cam1.png --task instance --model coco-instance
      segq submit a.jpg | xargs segq wait
    """
    client = _client()
    records = client.submit(list(paths), task=task, model=model, chunk_frames=chunk_frames,
                            batch_size=batch_size, annotate_fps=annotate_fps)
    model_name = records[0].model
    if not client.serving(model_name):
        err.print(f"[yellow]note:[/] no live worker serves model {model_name!r} yet; jobs wait in its queue")
    if not as_json and not wait_:
        for r in records:
            out.print(r.id, highlight=False)
        err.print(f"queued {len(records)} {task} job(s) on model {model_name}")
        return
    if wait_:
        records = _wait_with_progress(client, [r.id for r in records], timeout, quiet=as_json)
        _finish(records, as_json)
    else:
        display.print_json(out, [display.record_dict(r) for r in records])


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
def status(job_id, as_json):
    """Show one job: state, timings, FPS, worker, error, and presigned output URLs.

    \b
    Example:
      segq status 3f2a9c0d1e4b5a68 --json | jq .fps
    """
    client = _client()
    record = client.status(job_id)
    urls = client.urls(record) if record.state == "done" else {}
    links = client.flower_links(record)
    if as_json:
        display.print_json(out, display.record_dict(record, urls) | ({"flower": links} if links else {}))
    else:
        out.print(display.job_panel(record))
        display.print_links(out, {**links, **urls})
    if record.state == "failed":
        sys.exit(JobFailed.exit_code)


@cli.command(name="list")
@click.option("-n", "--limit", default=20, show_default=True, help="How many jobs.")
@click.option("--json", "as_json", is_flag=True)
def list_(limit, as_json):
    """Recent jobs, newest first.

    \b
    Example:
      segq list -n 50 --json | jq -r '.[] | select(.state == "failed") | .id'
    """
    records = _client().jobs(limit)
    if as_json:
        display.print_json(out, [display.record_dict(r) for r in records])
    elif not records:
        err.print("no jobs yet")
    else:
        out.print(display.jobs_table(records))


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 5).")
@click.option("--json", "as_json", is_flag=True, help="Print the final records as JSON.")
def wait(job_ids, timeout, as_json):
    """Wait for jobs with a progress bar; exit 1 if any failed.

    \b
    Example:
      segq wait $(segq submit shots/ --task semantic)
    """
    client = _client()
    records = _wait_with_progress(client, list(job_ids), timeout, quiet=as_json)
    _finish(records, as_json)


@cli.command()
@click.argument("job_id")
@click.option("-o", "--out", "out_dir", default="segq-out", show_default=True, type=click.Path(file_okay=False),
              help="Outputs go to OUT/<job id>/.")
@click.option("--json", "as_json", is_flag=True)
def get(job_id, out_dir, as_json):
    """Download a finished job's outputs (overlay, label map, segments JSON...).

    \b
    Example:
      segq get 3f2a9c0d1e4b5a68 -o results/
    """
    files = _client().download(job_id, out_dir)
    if as_json:
        display.print_json(out, [str(f) for f in files])
    else:
        for f in files:
            out.print(str(f), highlight=False)


@cli.command()
@click.option("--gpus", default="auto", show_default=True,
              help="auto (all GPUs, else CPU), all, cpu, or indexes such as 0,1. One process per GPU.")
@click.option("--models", help="Models to load and serve, by name or task (default: each task's model).")
@click.option("--queues", help="Extra queues to consume besides the models' own.")
@click.option("--name", help="Node name prefix (default segq); the device is appended: NAME-gpu0@host.")
@click.option("--threads", type=int, help="CPU threads per process (default: cores / processes on CPU).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="auto = fp16 on CUDA, fp32 on CPU.")
@click.option("--loglevel", default="info", show_default=True)
def worker(gpus, models, queues, name, threads, precision, loglevel):
    """Run GPU-pinned workers: one Celery worker process per GPU, models kept loaded.

    Needs the worker extra: pip install 'segq[worker]'. Each process sees only its GPU
    (CUDA_VISIBLE_DEVICES), loads its models once at start, and takes one job at a time.

    \b
    Examples:
      segq worker                          # every GPU of this host
      segq worker --gpus 0,1 --models panoptic
      segq worker --gpus cpu --threads 2   # no GPU
    """
    from segq.settings import Settings
    from workers import launcher

    procs = launcher.plan(Settings.from_env(), gpus=gpus, models=models, extra_queues=queues, name=name)
    for p in procs:
        device = f"GPU {p.cuda_visible_devices}" if p.cuda_visible_devices else "CPU"
        err.print(f"starting {p.hostname} on {device}: models {', '.join(p.models)}")
    sys.exit(launcher.run(procs, loglevel=loglevel, threads=threads, precision=precision))


@cli.command()
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for remote-control replies.")
@click.option("--json", "as_json", is_flag=True)
def workers(timeout, as_json):
    """Live workers: device, models loaded, current task, jobs done.

    Joins each worker's own record in Redis (refreshed every few seconds, even during a long
    task) with Celery's remote control (ping, active tasks, totals), which a worker answers
    between tasks.

    \b
    Example:
      segq workers --json | jq '.[] | {hostname, device, active}'
    """
    import dataclasses

    from producer import fleet

    client = _client()
    views = fleet.workers(client.settings, client.store.r, client.celery, timeout=timeout)
    if as_json:
        display.print_json(out, [dataclasses.asdict(v) | {"live": v.live} for v in views])
        return
    if not views:
        err.print("no live worker")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("worker", "device", "models", "active", "jobs done", "failed", "tasks", "heartbeat", "control"):
        table.add_column(col)
    for v in views:
        control = "-" if v.responding is None else ("answers" if v.responding else "[yellow]busy[/]")
        table.add_row(v.hostname, v.device, ", ".join(v.models), v.active or "idle", str(v.jobs_done),
                      str(v.jobs_failed), str(v.tasks_done),
                      f"{v.heartbeat_age:.0f}s ago" if v.heartbeat_age is not None else "-", control)
    out.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def queues(as_json):
    """Messages waiting in each queue (one queue per model).

    \b
    Example:
      segq queues --json
    """
    from producer import fleet

    client = _client()
    depths = fleet.queue_depths(client.settings, client.store.r)
    if as_json:
        display.print_json(out, depths)
    else:
        for name, n in depths.items():
            out.print(f"{name:<40} {n}", highlight=False)


@cli.command()
@click.option("--local", "local", is_flag=True, required=True,
              help="Check the workers of this host (the only mode for now).")
def health(local):
    """Exit 0 when Redis answers and this host's workers have their models loaded.

    For Kubernetes readiness/liveness probes and Docker health checks.

    \b
    Example:
      segq health --local || echo "not ready"
    """
    import redis

    from producer import fleet
    from segq.settings import Settings

    settings = Settings.from_env()
    ok, message = fleet.local_health(redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                                          socket_timeout=5, socket_connect_timeout=5))
    (out if ok else err).print(message, highlight=False)
    sys.exit(0 if ok else 1)


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=9808, show_default=True)
def exporter(address, port):
    """Serve Prometheus metrics (queue depth, jobs by outcome, frames, FPS, model load time).

    \b
    Example:
      segq exporter --address 0.0.0.0 --port 9808   # then scrape http://host:9808/metrics
    """
    from producer.exporter import serve
    from segq.settings import Settings

    err.print(f"serving metrics on http://{address}:{port}/metrics")
    serve(Settings.from_env(), address, port)


@cli.group()
def models():
    """The models the fleet serves, and offline stand-ins.

    \b
    Examples:
      segq models list
      segq models tiny ./models    # prints the SEGQ_MODELS line for them
    """


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json):
    """Configured model names, their checkpoints, and which task uses which by default."""
    from segq.settings import Settings

    s = Settings.from_env()
    rows = [{"model": n, "checkpoint": c, "default_for": [t for t, m in s.task_models.items() if m == n]}
            for n, c in s.models.items()]
    if as_json:
        display.print_json(out, rows)
    else:
        for row in rows:
            tasks = f"  (default for {', '.join(row['default_for'])})" if row["default_for"] else ""
            out.print(f"{row['model']:<16} {row['checkpoint']}{tasks}", highlight=False)


@models.command(name="tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def models_tiny(directory):
    """Write small random-initialised checkpoints for machines without hub access.

    Three folders (ade-semantic, coco-instance, coco-panoptic) with the real label sets, in
    the format from_pretrained reads. Their predictions are MEANINGLESS: they exist to run the
    system end to end. Prints the SEGQ_MODELS line that points workers at them.
    """
    from workers.checkpoints import make_all_tiny

    paths = make_all_tiny(directory)
    out.print("SEGQ_MODELS=" + ",".join(f"{k}={v}" for k, v in paths.items()), highlight=False, soft_wrap=True)


def _stack_models(data_dir: Path, offline: bool) -> dict[str, str] | None:
    if not offline:
        return None
    from workers.checkpoints import make_all_tiny

    err.print("[yellow]offline models:[/] random-initialised stand-ins; their predictions are meaningless")
    return make_all_tiny(data_dir / "models")


@cli.command()
@click.option("--data-dir", default=".segq", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--offline/--hub", default=True, show_default=True,
              help="--offline: generated tiny checkpoints; --hub: the real ones (needs hub access or HF cache).")
@click.option("--gpus", default="auto", show_default=True)
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--flower-auth", metavar="USER:PASSWORD", help="Basic auth for Flower (default: none, loopback only).")
def up(data_dir, offline, gpus, flower, flower_auth):
    """Start a local stack: Redis, SeaweedFS S3, one worker and Flower, on loopback.

    Prints the endpoints and writes DATA_DIR/segq.env; in another terminal run
    `export SEGQ_ENV_FILE=DATA_DIR/segq.env` and use segq as usual. Ctrl-C stops everything.

    \b
    Example:
      segq up --flower-auth admin:secret          # then, in another shell:
      export SEGQ_ENV_FILE=.segq/segq.env && segq submit street.jpg --task panoptic --wait
    """
    import signal
    import time

    from producer.stack import LocalStack

    stack = LocalStack(data_dir, models=_stack_models(data_dir, offline), flower=flower, gpus=gpus,
                       flower_auth=flower_auth)
    err.print("starting redis, s3, worker" + (", flower" if flower else "") + " ...")
    with stack:
        out.print(f"redis   {stack.redis.url}", highlight=False)
        out.print(f"s3      {stack.s3.endpoint}  bucket {stack.s3.bucket}", highlight=False)
        if flower:
            out.print(f"flower  {stack.flower.url}", highlight=False)
        out.print(f"logs    {stack.data_dir / 'logs'}", highlight=False)
        out.print(f"\nexport SEGQ_ENV_FILE={stack.env_file}", highlight=False)
        err.print("ready; Ctrl-C stops")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while stack.worker.running or not stack.with_worker:
                time.sleep(1)
            raise SegqError(f"the worker exited; see {stack.worker.log_path}")
        except KeyboardInterrupt:
            err.print("stopping ...")


@cli.command()
@click.option("--data-dir", default=".segq", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", default="segq-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--offline/--hub", default=True, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the stack running after the demo (Ctrl-C stops).")
def demo(data_dir, out_dir, offline, keep):
    """Start the local stack, segment a demo image (all three tasks) and a demo clip, show the outputs.

    \b
    Example:
      segq demo --keep          # leave the stack running afterwards (Ctrl-C stops it)
    """
    from producer.demo import run_demo

    sys.exit(run_demo(data_dir, out_dir, offline=offline, keep=keep, out=out, err=err))


def main() -> None:
    cli(prog_name="segq")


if __name__ == "__main__":
    main()
