"""How job records look in a terminal and in ``--json`` output."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from segq.batches import BatchRecord
from segq.jobs import JobRecord

STATE_STYLE = {"queued": "yellow", "running": "cyan", "done": "green", "failed": "red", "canceled": "magenta"}


def safe(value: object) -> str:
    """A user-supplied string fit for a terminal: control characters (escape sequences, carriage
    returns, bidirectional overrides...) written as ``\\xNN`` / ``\\uNNNN`` escapes, so a file
    named with terminal escape codes cannot repaint or hide what segq prints."""
    out = []
    for ch in str(value):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in _INVISIBLE:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


#: Format characters that reorder or hide text (bidi overrides and isolates, zero-width marks).
_INVISIBLE = frozenset([0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E,
                        0x2066, 0x2067, 0x2068, 0x2069, 0x2028, 0x2029, 0xFEFF])


def plain(value: object) -> Text:
    """``safe`` text that rich prints as it is (no markup, no highlighting)."""
    return Text(safe(value))


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
            r.id, state(r), r.task, r.model, plain(r.source or r.input), when(r.created_at),
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
        ("input", plain(record.input + (f"  (from {record.source})"
                                        if record.source and record.source != record.input else ""))),
        ("batch", f"{record.batch}  (priority {record.priority})" if record.batch else "-"),
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
    if record.stages:
        rows.append(("stages", stages_line(record.stages)))
    if record.cpu:
        rows.append(("CPU", stages_line(record.cpu) + "  (core time outside the model)"))
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
        rows.append(("note", plain(record.note)))
    if record.error:
        rows.append(("error", Text(safe(record.error), style="red")))
    for name, value in rows:
        t.add_row(name, value)
    return t


def stages_line(stages: dict[str, float]) -> str:
    """Where a job's time went, in one line: ``fetch 12 ms  decode 3 ms  forward 81 ms ...``."""
    from segq.jobs import STAGES

    return "  ".join(f"{name} {secs(stages[name])}" for name in STAGES if name in stages)



def batch_state(batch: BatchRecord) -> str:
    style = {"finished": "green" if not (batch.failed or batch.canceled) else "yellow",
             "submitting": "yellow", "queued": "yellow", "running": "cyan"}.get(batch.state, "white")
    return f"[{style}]{batch.state}[/]"


def counts(batch: BatchRecord) -> str:
    parts = [f"{n} {state}" for state, n in batch.counts.items() if n]
    return ", ".join(parts) or "no jobs"


def batch_panel(batch: BatchRecord) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("batch", batch.name),
        ("state", batch_state(batch)),
        ("task", f"{batch.task} on model {batch.model}, priority {batch.priority}"),
        ("jobs", f"{batch.jobs}: {counts(batch)}"),
        ("frames", f"{batch.frames_done}/{batch.frames_total}"),
        ("created", when(batch.created_at)),
        ("finished", when(batch.finished_at)),
    ]
    if batch.manifest_at:
        rows.append(("manifest", f"{when(batch.manifest_at)}  (segq get {batch.name} -o DIR downloads it)"))
    for name, value in rows:
        t.add_row(name, value)
    return t


def batches_table(batches: list[BatchRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("batch", "state", "task", "model", "priority", "jobs", "done", "failed", "created", "finished"):
        table.add_column(col, no_wrap=col in ("batch", "state"))
    for b in batches:
        table.add_row(b.name, batch_state(b), b.task, b.model, b.priority, str(b.jobs), str(b.done),
                      str(b.failed + b.canceled), when(b.created_at), when(b.finished_at))
    return table


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
