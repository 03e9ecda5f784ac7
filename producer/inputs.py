"""What the user asked to segment: local files, directories, globs and ``s3://`` objects.

Kinds are recognised by content (magic bytes, ``segq.media.sniff``), never by extension: a file
whose first bytes are neither an image nor a video format is refused, whatever its name (a text
file named ``.jpg`` is not uploaded). A file named on the command line must be one (exit 1
otherwise); directories and globs pick the images and videos and skip the rest.

Symlinks: a symlink named on the command line is followed only to a regular file that is an
image or video. Inside a scanned directory (or a glob's matches), symlinks are not followed
unless ``follow_symlinks`` (``segq submit --follow-symlinks``): a link to ``~/.ssh/id_rsa`` or
``/etc/passwd`` in a photo folder is skipped. The file uploaded is the resolved target that was
checked.

``s3://`` inputs must lie under ``SEGQ_INPUT_PREFIXES`` (``segq.access``); without settings the
default (``inputs/`` of the segq bucket) applies.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from segq import access, defaults
from segq.errors import InputError, UsageError
from segq.jobs import JobKind
from segq.media import HEAD_BYTES, sniff
from segq.storage import S3Object, parse_s3_uri

VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}


@dataclass(frozen=True)
class Input:
    kind: JobKind
    display: str  # as the user named it
    ext: str  # lower-case extension for the stored key ("" if none)
    path: Path | None = None
    s3: S3Object | None = None


def kind_of(path: Path) -> str | None:
    """IMAGE or VIDEO from the file's first bytes; None when they are neither."""
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return sniff(head)


def _file(path: Path, display: str, explicit: bool) -> Input | None:
    """An input for a regular file (``path`` already resolved), or None / InputError when its
    content is not an image or video."""
    kind = kind_of(path)
    if kind is None:
        if explicit:
            if path.stat().st_size == 0:
                raise InputError(f"{display}: empty file (0 bytes), not an image or video")
            raise InputError(f"{display}: not an image or video (its content is neither, whatever its name)")
        return None
    return Input(kind=kind, display=display, ext=Path(display).suffix.lower(), path=path)


def _s3(uri: str, settings=None) -> Input:
    obj = parse_s3_uri(uri)
    configured = settings.input_prefixes if settings is not None else ()
    bucket = settings.s3_bucket if settings is not None else defaults.S3_BUCKET
    reason = access.refusal(obj.bucket, obj.key, configured, bucket)
    if reason:
        raise InputError(reason)
    ext = os.path.splitext(obj.key)[1].lower()
    kind = JobKind.VIDEO if ext in VIDEO_EXTS else JobKind.IMAGE
    return Input(kind=kind, display=uri, ext=ext, s3=obj)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _scanned(path: Path, root: Path | None, follow_symlinks: bool) -> Path | None:
    """A directory entry or glob match as a resolved regular file, or None to skip it: not a
    regular file, or a symlink (not followed unless ``follow_symlinks``, or pointing inside the
    scanned directory ``root``)."""
    if path.is_symlink():
        target = path.resolve()
        if not follow_symlinks and (root is None or not _inside(target, root)):
            return None
        path = target
    return path if path.is_file() else None


def _directory(path: Path, follow_symlinks: bool) -> list[Path]:
    root = path.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                files.append(Path(dirpath) / name)
    out = []
    for f in files:
        resolved = _scanned(f, root, follow_symlinks)
        if resolved is not None:
            out.append((f, resolved))
    return out


def expand(args: list[str], settings=None, follow_symlinks: bool = False) -> list[Input]:
    """Each argument -> inputs, in order, without duplicates. Raises for names that match nothing,
    files that are not images or videos, and ``s3://`` keys outside the allowed prefixes."""
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
            add(_s3(arg, settings))
            continue
        path = Path(arg).expanduser()
        if path.is_dir() and path.is_symlink() and not follow_symlinks:
            raise InputError(f"{arg}: a symlink to a directory; not followed without --follow-symlinks")
        if path.is_dir():
            found = [_file(resolved, str(p), explicit=False) for p, resolved in _directory(path, follow_symlinks)]
            if not any(found):
                raise InputError(f"{arg}: no images or videos in this directory")
            for item in found:
                add(item)
        elif path.is_file():
            # A symlink named explicitly: followed to its regular-file target, which must sniff.
            add(_file(path.resolve(), arg, explicit=True))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            scanned = [(m, _scanned(Path(m), None, follow_symlinks)) for m in matches]
            found = [_file(resolved, m, explicit=False) for m, resolved in scanned if resolved is not None]
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
