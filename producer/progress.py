"""Following work in a terminal: progress bars while submitting, waiting and downloading, one
line (or JSON) per job or batch at the end. Bars go to stderr, and only when it is a terminal.

Public: ``segq submit``, ``segq wait``, ``segq get`` and ``segq demo`` use it.
"""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from segq.errors import JobFailed

from producer import display

#: stdout: results (ids, tables, JSON). stderr: progress, notes, errors.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def wait_with_progress(client, ids: list[str], timeout: float | None, quiet: bool,
                       console: Console | None = None) -> list:
    """``client.wait(ids)`` with a progress bar on ``console`` (stderr) when it is a terminal.

    The bar counts one unit per image and one per frame of a video once its split step has
    counted them. ``quiet`` hides it (for ``--json``).
    """
    console = console or err
    show = not quiet and console.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as progress:
        bar = progress.add_task("jobs", total=len(ids), detail="")

        def update(records):
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


def finish(records, as_json: bool, console: Console | None = None) -> None:
    """Print the final records (a line each, or JSON); raise JobFailed (exit 1) if any failed."""
    console = console or out
    if as_json:
        display.print_json(console, [display.record_dict(r) for r in records])
    else:
        for r in records:
            line = f"{r.id}  {display.state(r)}"
            if r.state == "done" and r.kind == "video":
                line += (f"  {r.frames_total} frames in {r.chunks_total} chunks, inference {r.fps or 0:.2f} fps, "
                         f"end to end {r.e2e_fps or 0:.2f} fps")
            elif r.state == "done":
                line += f"  inference {display.secs(r.inference_s)}, {r.segments} segments"
            elif r.error:
                line += f"  {escape(display.safe(r.error))}"
            console.print(line, highlight=False)
    failed = [r for r in records if r.state == "failed"]
    canceled = [r for r in records if r.state == "canceled"]
    if failed or canceled:
        parts = [f"{len(failed)} failed"] * bool(failed) + [f"{len(canceled)} canceled"] * bool(canceled)
        raise JobFailed(f"{' and '.join(parts)} of {len(records)} jobs")


class _SubmitBar:
    """Counts a submission's jobs as they are created (the total is not known while inputs stream)."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.bar = progress.add_task("submitting", total=None, detail="") if progress else None
        self.jobs = self.skips = self.refusals = 0

    def _show(self) -> None:
        if self.progress is not None:
            detail = f"{self.skips} already in the batch" if self.skips else ""
            if self.refusals:
                detail += (", " if detail else "") + f"[red]{self.refusals} refused[/]"
            self.progress.update(self.bar, completed=self.jobs, detail=detail)

    def wrap(self, on_job):
        def counted(record):
            on_job(record)
            self.jobs += 1
            self._show()

        return counted

    def skipped(self, _input, _holder) -> None:
        self.skips += 1
        self._show()

    def refused(self, _refused) -> None:
        self.refusals += 1
        self._show()


@contextlib.contextmanager
def submit_progress(console: Console, quiet: bool):
    """A spinner and a count of the jobs created while ``segq submit`` runs."""
    show = not quiet and console.is_terminal
    if not show:
        yield _SubmitBar(None)
        return
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.completed} jobs"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=True) as p:
        yield _SubmitBar(p)


def wait_batches_with_progress(client, names: list[str], timeout: float | None, quiet: bool,
                               console: Console | None = None) -> list:
    """``client.wait_batch(names)`` with one bar over all their jobs (stderr, when a terminal)."""
    console = console or err
    show = not quiet and console.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as progress:
        bar = progress.add_task(names[0] if len(names) == 1 else f"{len(names)} batches", total=None, detail="")

        def update(batches):
            jobs = sum(b.jobs for b in batches)
            ended = sum(b.ended for b in batches)
            running = sum(b.running for b in batches)
            failed = sum(b.failed for b in batches)
            frames, total = sum(b.frames_done for b in batches), sum(b.frames_total for b in batches)
            detail = f"{running} running" + (f", [red]{failed} failed[/]" if failed else "")
            if total > jobs:  # videos among them
                detail += f", frames {frames}/{total}"
            progress.update(bar, total=jobs, completed=ended, detail=detail)

        return client.wait_batch(names, timeout=timeout, on_progress=update)


def finish_batches(client, batches, as_json: bool, console: Console | None = None) -> None:
    """Print each finished batch (a line, or JSON); raise JobFailed (exit 1) if any job failed."""
    console = console or out
    if as_json:
        display.print_json(console, [b.to_dict() for b in batches])
    else:
        for b in batches:
            console.print(f"{b.name}  {display.batch_state(b)}  {display.counts(b)}"
                          + (f", {b.frames_done} frames" if b.frames_total > b.jobs else ""), highlight=False)
    failed = sum(b.failed for b in batches)
    canceled = sum(b.canceled for b in batches)
    if failed or canceled:
        parts = [f"{failed} failed"] * bool(failed) + [f"{canceled} canceled"] * bool(canceled)
        names = " ".join(b.name for b in batches if b.failed or b.canceled)
        raise JobFailed(f"{' and '.join(parts)} of {sum(b.jobs for b in batches)} jobs "
                        f"(segq retry {names} runs them again)")


def download_with_progress(client, name: str, out_dir, threads: int, quiet: bool, console: Console | None = None):
    """``client.download_batch`` with a bar over the files (stderr, when a terminal)."""
    console = console or err
    show = not quiet and console.is_terminal
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=console, disable=not show, transient=False) as progress:
        bar = progress.add_task(f"{name} files", total=None, detail="")

        def update(done: int, known: int, skipped: int) -> None:
            progress.update(bar, completed=done, total=known,
                            detail=f"{skipped} already there" if skipped else "")

        return client.download_batch(name, out_dir, threads=threads, on_progress=update)
