"""How job records look in a terminal and in ``--json`` output."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from segq.jobs import JobRecord

STATE_STYLE = {"queued": "yellow", "running": "cyan", "done": "green", "failed": "red", "canceled": "magenta"}


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def state(record: JobRecord) -> str:
    return f"[{STATE_STYLE.get(record.state, 'white')}]{record.state}[/]"


def record_dict(record: JobRecord, urls: dict[str, str] | None = None) -> dict[str, Any]:
    data = record.to_dict()
    if urls is not None:
        data["urls"] = urls
    return data


def print_json(console: Console, data: Any) -> None:
    console.print_json(json.dumps(data), highlight=False) if console.is_terminal else print(json.dumps(data, indent=2))


def jobs_table(records: list[JobRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("job", "state", "task", "model", "source", "created", "wait", "infer", "fps", "worker"):
        table.add_column(col, no_wrap=col in ("job", "state"))
    for r in records:
        table.add_row(
            r.id, state(r), r.task, r.model, r.source or r.input, when(r.created_at),
            secs(r.queue_wait_s), secs(r.inference_s), f"{r.fps:.2f}" if r.fps else "-", r.worker or "-",
        )
    return table


def job_panel(record: JobRecord) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("job", record.id),
        ("state", state(record)),
        ("task", record.task),
        ("model", f"{record.model}" + (f"  ({record.checkpoint})" if record.checkpoint else "")),
        ("input", record.input + (f"  (from {record.source})" if record.source and record.source != record.input else "")),
        ("created", when(record.created_at)),
        ("started", when(record.started_at)),
        ("finished", when(record.finished_at)),
        ("queue wait", secs(record.queue_wait_s)),
        ("inference", secs(record.inference_s)),
        ("worker time", secs(record.total_s)),
        ("fps", f"{record.fps:.2f}" if record.fps else "-"),
        ("size", f"{record.width}x{record.height}" if record.width else "-"),
    ]
    if record.kind == "video":
        rows += [
            ("frames", f"{record.frames_done or 0}/{record.frames_total or '?'}"
                       + (f" at {record.video_fps:g} fps" if record.video_fps else "")),
            ("chunks", f"{record.chunks_done or 0}/{record.chunks_total or '?'} of {record.chunk_frames} frames, "
                       f"batch {record.batch_size}"),
            ("end to end", f"{record.e2e_fps:.2f} fps" if record.e2e_fps else "-"),
            ("split", secs(record.split_s)),
            ("assembly", secs(record.assemble_s)),
        ]
    rows += [
        ("segments", str(record.segments) if record.segments is not None else "-"),
        ("worker", f"{record.worker} on {record.device}" if record.worker else "-"),
        ("attempts", str(record.attempts)),
    ]
    if record.retry:
        rows.append(("retry", str(record.retry)))
    if record.requeues:
        rows.append(("requeued", f"{record.requeues} time(s) after a worker was lost"))
    if record.note:
        rows.append(("note", record.note))
    if record.error:
        rows.append(("error", f"[red]{record.error}[/]"))
    for name, value in rows:
        t.add_row(name, value)
    return t


def print_links(console: Console, links: dict[str, str]) -> None:
    """One ``name  url`` line per link, never cut or wrapped: a presigned URL must paste whole,
    whatever the terminal's width, and also when stdout is a file or a pipe."""
    if not links:
        return
    width = max(len(name) for name in links)
    for name, url in links.items():
        console.print(f"[bold]{name:<{width}}[/]  {url}", highlight=False, soft_wrap=True, crop=False)


REDACTED = "***"
#: URL query parameters whose values are never shown.
SECRET_PARAMS = ("password", "passwd", "pass", "secret", "token", "access_token", "api_key", "apikey")


def redact(value: str) -> str:
    """A URL with its password (``scheme://user:PASSWORD@host``, ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme:
        return value
    netloc, query = parts.netloc, parts.query
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo and userinfo.split(":", 1)[1]:
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return value
    return urlunsplit(parts._replace(netloc=netloc, query=query))
