"""Job and batch commands: ``submit``, ``status``, ``list``, ``batches``, ``wait``, ``get``, ``cancel``,
``retry``. Every command that takes a job id also takes a batch name."""

from __future__ import annotations

import sys

import click

from segq.errors import JobFailed
from segq.protocol import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_FRAMES, MAX_BATCH_SIZE, MAX_CHUNK_FRAMES, TASKS
from segq.states import PRIORITIES

from producer import display
from producer.progress import (
    download_with_progress, err, finish, finish_batches, out, submit_progress, wait_batches_with_progress,
    wait_with_progress,
)


def _client():
    from producer.client import Client  # boto3, redis, celery: only for the commands that talk to them

    return Client()


def _split(refs) -> tuple[list[str], list[str]]:
    """Job ids and batch names of the command line (JobNotFound, exit 4, for anything else)."""
    from producer.client import kind_of_ref

    jobs, batches = [], []
    for ref in refs:
        (jobs if kind_of_ref(ref) == "job" else batches).append(ref)
    return jobs, batches


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-t", "--task", type=click.Choice(TASKS), required=True, help="Segmentation task.")
@click.option("-m", "--model", help="Model name from SEGQ_MODELS (default: the task's model, see `segq models`).")
@click.option("-b", "--batch", "batch", metavar="NAME",
              help="Name of the batch (default: a new generated name). Submitting to an existing batch adds only "
                   "the inputs it does not hold yet: run the same command again to resume.")
@click.option("-p", "--priority", type=click.Choice([p.value for p in PRIORITIES]), default="normal", show_default=True,
              help="Workers take high before normal before low work; low runs only when no normal work waits.")
@click.option("--chunk-frames", type=click.IntRange(1, MAX_CHUNK_FRAMES), default=DEFAULT_CHUNK_FRAMES,
              show_default=True, help="Videos: frames per chunk; chunks run on any worker in parallel.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Videos: frames per forward pass.")
@click.option("--annotate-fps", is_flag=True, help="Videos: write the inference FPS on each frame, as the article does.")
@click.option("--uploads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Files uploaded at once.")
@click.option("-w", "--wait", "wait_", is_flag=True, help="Wait for the batch; exit 1 if any job fails.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 5).")
@click.option("--json", "as_json", is_flag=True, help='Print {"batch", "jobs", "skipped", "refused"} as JSON.')
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks found inside directories and globs (default: skip those leading out).")
def submit(paths, task, model, batch, priority, chunk_frames, batch_size, annotate_fps, uploads, wait_, timeout,
           as_json, follow_symlinks):
    """Queue one job per image or video, as one batch.

    PATHS are image or video files (recognised by content: anything else is refused, whatever
    its name), directories (every image and video inside, recursively; symlinks leading out are
    skipped unless --follow-symlinks), globs ('shots/*.png', quoted), objects already in storage
    (s3://bucket/key) or every image and video object under a prefix (s3://bucket/folder/), under
    SEGQ_INPUT_PREFIXES (inputs/ of the segq bucket by default). Local files are uploaded to the
    segq bucket under the job id, several at a time. A video is split into chunks of
    --chunk-frames frames that any worker may take; its overlay comes back as one H.264 MP4 with
    every frame, the input's frame rate, size and audio.

    Prints one job id per line on stdout as the jobs are created, and the batch on stderr. The
    batch is the handle for all of them: segq wait/status/get/cancel/retry BATCH. Submitting
    again with the same --batch skips the inputs the batch already holds (same path or URI,
    size and modification time or ETag), so an interrupted submission is simply run again.

    \b
    Examples:
      segq submit street.jpg --task panoptic --wait
      segq submit photos/ --task semantic --batch photos-v1     # again after a crash: resumes
      segq wait photos-v1 && segq get photos-v1 -o results/    # outputs + manifest.jsonl
      segq submit s3://datasets/cam1/ --task instance --priority low
      segq submit clip.mp4 --task semantic --chunk-frames 64 --batch-size 8 --wait
      segq submit 'frames/**/*.jpg' --task semantic --json | jq -r .batch
    """
    client = _client()
    ids: list[str] = []

    def on_job(record):
        if as_json:
            ids.append(record.id)
        else:
            out.print(record.id, highlight=False)

    with submit_progress(err, quiet=as_json) as progress:
        report = client.submit_batch(
            list(paths), task=task, model=model, batch=batch, priority=priority, chunk_frames=chunk_frames,
            batch_size=batch_size, annotate_fps=annotate_fps, follow_symlinks=follow_symlinks, threads=uploads,
            on_job=progress.wrap(on_job), on_skip=progress.skipped, on_refused=progress.refused)
    model_name = client.settings.resolve_model(task, model)
    if not report.serving:
        err.print(f"[yellow]note:[/] no live worker serves model {model_name!r} yet; jobs wait in its queue")
    verb = "created" if report.created else "added to"
    err.print(f"batch {report.batch}: {verb}, {report.submitted} {task} job(s) queued on model {model_name}"
              + (f", priority {priority}" if priority != "normal" else "")
              + (f"; {report.skipped} input(s) skipped: already in the batch" if report.skipped else ""),
              highlight=False)
    for refused in report.refused[:20]:
        err.print(f"[red]refused:[/] {display.safe(refused.reason)}", highlight=False)
    if len(report.refused) > 20:
        err.print(f"[red]refused:[/] and {len(report.refused) - 20} more", highlight=False)
    if wait_:
        wait_batches_with_progress(client, [report.batch], timeout, quiet=as_json)
        finish(list(client.batch_jobs(report.batch)), as_json)
    elif as_json:
        display.print_json(out, {**report.to_dict(), "jobs": ids})
    if report.refused:
        raise JobFailed(f"{len(report.refused)} input(s) refused (see above); the others were submitted")


@click.command()
@click.argument("ref", metavar="JOB_OR_BATCH")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def status(ref, as_json):
    """Show one job (state, timings, FPS, worker, error, presigned output URLs) or one batch
    (counts by state, frames, times).

    \b
    Examples:
      segq status 3f2a9c0d1e4b5a68 --json | jq .fps
      segq status photos-v1 --json | jq .counts
    """
    client = _client()
    jobs, _ = _split([ref])
    if not jobs:
        batch = client.batch(ref)
        if as_json:
            display.print_json(out, batch.to_dict())
        else:
            out.print(display.batch_panel(batch))
        if batch.final and batch.failed:
            sys.exit(JobFailed.exit_code)
        return
    record = client.status(ref)
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
@click.option("-n", "--limit", default=20, show_default=True, help="How many batches.")
@click.option("--json", "as_json", is_flag=True)
def batches(limit, as_json):
    """Recent batches (every submission is one), newest first, with their counts.

    \b
    Example:
      segq batches --json | jq -r '.[] | select(.state != "finished") | .name'
    """
    records = _client().recent_batches(limit)
    if as_json:
        display.print_json(out, [b.to_dict() for b in records])
    elif not records:
        err.print("no batches yet")
    else:
        out.print(display.batches_table(records))


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="JOB_OR_BATCH...")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 5).")
@click.option("--json", "as_json", is_flag=True, help="Print the final records as JSON.")
def wait(refs, timeout, as_json):
    """Wait for jobs or batches with a progress bar; exit 1 if any job failed.

    A batch is waited on as one (one bar over its jobs, whatever its size).

    \b
    Examples:
      segq wait photos-v1
      segq wait $(segq submit a.jpg b.jpg --task semantic)
    """
    client = _client()
    jobs, names = _split(refs)
    if names and jobs:
        raise click.UsageError("wait for jobs or for batches, not both at once")
    if names:
        finish_batches(client, wait_batches_with_progress(client, names, timeout, quiet=as_json), as_json)
        return
    finish(wait_with_progress(client, jobs, timeout, quiet=as_json), as_json)


@click.command()
@click.argument("ref", metavar="JOB_OR_BATCH")
@click.option("-o", "--out", "out_dir", default="segq-out", show_default=True, type=click.Path(file_okay=False),
              help="A job's outputs go to OUT/<job id>/; a batch's to OUT/<batch>/<job id>/, with its manifest.")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Batches: files downloaded at once.")
@click.option("--json", "as_json", is_flag=True)
def get(ref, out_dir, threads, as_json):
    """Download a finished job's outputs (overlay, label map, segments JSON...), or every output
    of a finished batch and its manifest.jsonl (one line per job: source, job, state, error,
    outputs). Run it again to fetch only what is missing.

    \b
    Examples:
      segq get 3f2a9c0d1e4b5a68 -o results/
      segq get photos-v1 -o results/     # results/photos-v1/manifest.jsonl, results/photos-v1/<job>/...
    """
    client = _client()
    jobs, _ = _split([ref])
    if jobs:
        files = client.download(ref, out_dir)
        if as_json:
            display.print_json(out, [str(f) for f in files])
        else:
            for f in files:
                out.print(str(f), highlight=False)
        return
    root, fetched, kept = download_with_progress(client, ref, out_dir, threads, quiet=as_json)
    if as_json:
        display.print_json(out, {"batch": ref, "folder": str(root), "downloaded": fetched, "already_there": kept})
    else:
        out.print(str(root), highlight=False)
        err.print(f"{fetched} file(s) downloaded, {kept} already there; manifest: {root / 'manifest.jsonl'}")


def _outcomes(results, as_json: bool, ok: str) -> None:
    """One line (or JSON object) per job or batch and what was done to it; exit 1 when any was
    not done (a batch with nothing to retry included)."""
    from segq.batches import BatchRecord

    def name(r) -> str:
        return r.name if isinstance(r, BatchRecord) else r.id

    def state(r) -> str:
        return display.batch_state(r) if isinstance(r, BatchRecord) else display.state(r)

    if as_json:
        display.print_json(out, [(r.to_dict() if isinstance(r, BatchRecord) else display.record_dict(r))
                                 | {"outcome": o} for r, o in results])
    else:
        for r, o in results:
            out.print(f"{name(r)}  {state(r)}  {display.safe(o)}", highlight=False)
    refused = [name(r) for r, o in results if not o.startswith(ok)]
    if refused:
        shown = ", ".join(refused[:20]) + (f" and {len(refused) - 20} more" if len(refused) > 20 else "")
        raise JobFailed(f"{len(refused)} of {len(results)} jobs were not {ok.split()[0]}: {shown}")


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="JOB_OR_BATCH...")
@click.option("--json", "as_json", is_flag=True, help="Print the records and outcomes as JSON.")
def cancel(refs, as_json):
    """Cancel jobs, or every job of a batch. A batch: its queued images are canceled at once, its
    running shards stop within a second (what they finished stays done), its videos are
    canceled; one line says what it did. A video: queued work is skipped, a running video stops
    after its current batch of frames, no assembly runs, partial outputs are removed. An image:
    canceled if its shard has not begun it (a running shard skips it unless it is done first).
    The state becomes `canceled`.

    Idempotent: canceling a canceled job is fine (exit 0). A job that already ended (done or
    failed) is left as it is, and the command exits 1.

    \b
    Examples:
      segq cancel 3f2a9c0d1e4b5a68
      segq cancel photos-v1
    """
    _outcomes(_client().cancel(list(refs)), as_json, ok="canceled")


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="JOB_OR_BATCH...")
@click.option("-w", "--wait", "wait_", is_flag=True, help="Wait for the jobs; exit 1 if any fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the records and outcomes as JSON.")
def retry(refs, wait_, as_json):
    """Run failed or canceled jobs again (by id, or every failed or canceled job of a batch),
    from their stored input: a batch's images in new shards (only those that failed or were
    canceled), a video with a new attempt number.

    Their old outputs are removed first. A job that is queued, running or done is not retried
    (exit 1); a batch with nothing failed or canceled says so (exit 1).

    \b
    Examples:
      segq retry 3f2a9c0d1e4b5a68 --wait
      segq retry photos-v1
    """
    from segq.batches import BatchRecord

    client = _client()
    results = client.retry(list(refs))
    if wait_:
        batches = [r.name for r, o in results if isinstance(r, BatchRecord) and o.startswith("retry")]
        retried = [r.id for r, o in results if not isinstance(r, BatchRecord) and o.startswith("retry")]
        if batches:
            finish_batches(client, wait_batches_with_progress(client, batches, None, quiet=as_json), as_json)
        if retried:
            finish(wait_with_progress(client, retried, None, quiet=as_json), as_json)
        if batches or retried:
            return
    _outcomes(results, as_json, ok="retry")


COMMANDS = (submit, status, list_, batches, wait, get, cancel, retry)
