"""What the user asked to segment: local files, directories, globs and ``s3://`` objects.

Kinds are recognised by content (magic bytes) first, then by extension. A file given by name
is always submitted when its content or extension says image, so that a damaged file gets a
failed job with the reason rather than silence; directories and globs pick only images.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from segq.errors import InputError, UsageError
from segq.jobs import JobKind
from segq.media import HEAD_BYTES, sniff
from segq.storage import S3Object, parse_s3_uri

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}


@dataclass(frozen=True)
class Input:
    kind: JobKind
    display: str  # as the user named it
    ext: str  # lower-case extension for the stored key ("" if none)
    path: Path | None = None
    s3: S3Object | None = None


def kind_of(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    found = sniff(head)
    if found:
        return found
    ext = path.suffix.lower()
    return JobKind.IMAGE if ext in IMAGE_EXTS else JobKind.VIDEO if ext in VIDEO_EXTS else None


def _file(path: Path, display: str, explicit: bool) -> Input | None:
    kind = kind_of(path)
    if kind is None:
        if explicit:
            raise InputError(f"{display}: not an image or video (unknown content and extension)")
        return None
    return Input(kind=kind, display=display, ext=path.suffix.lower(), path=path)


def _s3(uri: str) -> Input:
    obj = parse_s3_uri(uri)
    ext = os.path.splitext(obj.key)[1].lower()
    kind = JobKind.VIDEO if ext in VIDEO_EXTS else JobKind.IMAGE
    return Input(kind=kind, display=uri, ext=ext, s3=obj)


def expand(args: list[str]) -> list[Input]:
    """Each argument -> inputs, in order, without duplicates. Raises for names that match nothing."""
    out: list[Input] = []
    seen: set[str] = set()

    def add(item: Input | None) -> None:
        if item is None:
            return
        ident = item.display if item.s3 else str(item.path.resolve())
        if ident not in seen:
            seen.add(ident)
            out.append(item)

    for arg in args:
        if arg.startswith("s3://"):
            add(_s3(arg))
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            found = [_file(p, str(p), explicit=False) for p in files]
            if not any(found):
                raise InputError(f"{arg}: no images or videos in this directory")
            for item in found:
                add(item)
        elif path.is_file():
            add(_file(path, arg, explicit=True))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            found = [_file(Path(m), m, explicit=False) for m in matches if Path(m).is_file()]
            if not any(found):
                raise InputError(f"{arg}: the pattern matches no image or video")
            for item in found:
                add(item)
        elif path.exists():
            raise InputError(f"{arg}: not a regular file")
        else:
            raise InputError(f"{arg}: no such file or directory")
    if not out:
        raise UsageError("nothing to submit")
    return out
