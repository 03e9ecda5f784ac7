"""Job commands: ``submit``, ``status``, ``list``, ``wait``, ``get``."""

from __future__ import annotations

import sys

import click

from segq.errors import JobFailed
from segq.protocol import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_FRAMES, TASKS

from producer import display
from producer.cli.progress import err, finish, out, wait_with_progress


def _client():
    from producer.client import Client  # boto3, redis, celery: only for the commands that talk to them

    return Client()


@click.command()
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
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks found inside directories and globs (default: skip those leading out).")
def submit(paths, task, model, chunk_frames, batch_size, annotate_fps, wait_, timeout, as_json, follow_symlinks):
    """Queue one job per image or video.

    PATHS are image or video files (recognised by content: anything else is refused, whatever
    its name), directories (every image and video inside, recursively; symlinks leading out are
    skipped unless --follow-symlinks), globs ('shots/*.png', quoted) or objects already in
    storage (s3://bucket/key, under SEGQ_INPUT_PREFIXES: inputs/ of the segq bucket by default). Local files are uploaded to the segq bucket under the job id. A video is
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
                            batch_size=batch_size, annotate_fps=annotate_fps, follow_symlinks=follow_symlinks)
    model_name = records[0].model
    if not client.serving(model_name):
        err.print(f"[yellow]note:[/] no live worker serves model {model_name!r} yet; jobs wait in its queue")
    if not as_json and not wait_:
        for r in records:
            out.print(r.id, highlight=False)
        err.print(f"queued {len(records)} {task} job(s) on model {model_name}")
        return
    if wait_:
        records = wait_with_progress(client, [r.id for r in records], timeout, quiet=as_json)
        finish(records, as_json)
    else:
        display.print_json(out, [display.record_dict(r) for r in records])


@click.command()
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
        extra = ({"flower": links} if links else {}) | {"worker_gone": client.worker_gone(record)}
        display.print_json(out, display.record_dict(record, urls) | extra)
    else:
        out.print(display.job_panel(record))
        if client.worker_gone(record):
            err.print(f"[yellow]worker {record.worker} is gone[/]: its work is requeued when its lease expires "
                      f"(within {3 * client.settings.heartbeat_seconds}s of its last heartbeat) by a live worker")
        display.print_links(out, {**links, **urls})
    if record.state == "failed":
        sys.exit(JobFailed.exit_code)


@click.command(name="list")
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


@click.command()
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
    records = wait_with_progress(client, list(job_ids), timeout, quiet=as_json)
    finish(records, as_json)


@click.command()
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


def _outcomes(results, as_json: bool, ok: str) -> None:
    if as_json:
        display.print_json(out, [display.record_dict(r) | {"outcome": o} for r, o in results])
    else:
        for r, o in results:
            out.print(f"{r.id}  {display.state(r)}  {o}", highlight=False)
    refused = [r.id for r, o in results if not o.startswith(ok)]
    if refused:
        raise JobFailed(f"{len(refused)} of {len(results)} jobs were not {ok.split()[0]}: {', '.join(refused)}")


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the records and outcomes as JSON.")
def cancel(job_ids, as_json):
    """Cancel jobs: queued work is skipped, a running video stops after its current batch, no
    assembly runs, and partial outputs are removed. The state becomes `canceled`.

    Idempotent: canceling a canceled job is fine (exit 0). A job that already ended (done or
    failed) is left as it is, and the command exits 1.

    \b
    Examples:
      segq cancel 3f2a9c0d1e4b5a68
      segq list --json | jq -r '.[] | select(.state == "queued") | .id' | xargs segq cancel
    """
    _outcomes(_client().cancel(list(job_ids)), as_json, ok="canceled")


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("-w", "--wait", "wait_", is_flag=True, help="Wait for the jobs; exit 1 if any fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the records and outcomes as JSON.")
def retry(job_ids, wait_, as_json):
    """Run failed or canceled jobs again, from their stored input, with a new attempt number.

    Their old outputs are removed first. A job that is queued, running or done is not retried
    (exit 1); retrying the same failed job twice in a row queues it once.

    \b
    Examples:
      segq retry 3f2a9c0d1e4b5a68 --wait
      segq list -n 200 --json | jq -r '.[] | select(.state == "failed") | .id' | xargs segq retry
    """
    client = _client()
    results = client.retry(list(job_ids))
    if wait_:
        retried = [r.id for r, o in results if o.startswith("retry")]
        finish(wait_with_progress(client, retried, None, quiet=as_json), as_json)
        return
    _outcomes(results, as_json, ok="retry")


COMMANDS = (submit, status, list_, wait, get, cancel, retry)
