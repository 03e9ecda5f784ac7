"""Following jobs in a terminal: a progress bar while waiting, one line (or JSON) per job at the end.

Public: ``segq wait``, ``segq submit --wait`` and ``segq demo`` use it.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
                line += f"  {r.error}"
            console.print(line, highlight=False)
    failed = [r for r in records if r.state == "failed"]
    canceled = [r for r in records if r.state == "canceled"]
    if failed or canceled:
        parts = [f"{len(failed)} failed"] * bool(failed) + [f"{len(canceled)} canceled"] * bool(canceled)
        raise JobFailed(f"{' and '.join(parts)} of {len(records)} jobs")
