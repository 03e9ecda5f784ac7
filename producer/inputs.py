"""What the user asked to segment: local files, directories, globs, ``s3://`` objects and prefixes,
enumerated lazily (memory does not grow with the number of inputs: ``segq submit`` of a million
files streams them).

Kinds are recognised by content (magic bytes, ``segq.media.sniff``), never by extension: a file
whose first bytes are neither an image nor a video format is refused, whatever its name (a text
file named ``.jpg`` is not uploaded). A file named on the command line must be one (InputError
otherwise, before anything is submitted: :func:`check_explicit`); directories and globs pick the
images and videos and skip the rest. Objects under an ``s3://`` prefix are picked by extension
(their content is checked by the worker that reads them).

Symlinks: a symlink named on the command line is followed only to a regular file that is an
image or video. Inside a scanned directory (or a glob's matches), symlinks are not followed
unless ``follow_symlinks`` (``segq submit --follow-symlinks``): a link to ``~/.ssh/id_rsa`` or
``/etc/passwd`` in a photo folder is skipped. The file uploaded is the resolved target that was
checked.

``s3://`` inputs (keys and prefixes) must lie under ``SEGQ_INPUT_PREFIXES`` (``segq.input_policy``).

Every input has an **identity** (``segq.batches.identity``): a local file's resolved path, size
and modification time; an object's URI, size and ETag. A batch remembers the identities it holds,
so submitting the same inputs to it again adds only the new or changed ones.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from segq import input_policy, limits
from segq.batches import identity
from segq.errors import InputError
from segq.media import HEAD_BYTES, sniff
from segq.states import JobKind
from segq.storage import S3Object, Storage, parse_s3_uri

VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Input:
    kind: JobKind
    display: str  # as the user named it (or the object's URI)
    ext: str  # lower-case extension for the stored key ("" if none)
    identity: str  # segq.batches.identity of what it is
    size: int
    path: Path | None = None
    s3: S3Object | None = None


@dataclass(frozen=True)
class Refused:
    """An input found while scanning that is not submitted, and why (too large, unreadable)."""

    display: str
    reason: str


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
    stat = path.stat()
    if kind is None:
        if explicit:
            if stat.st_size == 0:
                raise InputError(f"{display}: empty file (0 bytes), not an image or video")
            raise InputError(f"{display}: not an image or video (its content is neither, whatever its name)")
        return None
    return Input(kind=kind, display=display, ext=Path(display).suffix.lower(), path=path, size=stat.st_size,
                 identity=identity("file", path.resolve(), stat.st_size, stat.st_mtime_ns))


def _kind_by_ext(key: str) -> JobKind | None:
    ext = os.path.splitext(key)[1].lower()
    return JobKind.VIDEO if ext in VIDEO_EXTS else JobKind.IMAGE if ext in IMAGE_EXTS else None


def _object(bucket: str, key: str, size: int, etag: str) -> Input:
    uri = f"s3://{bucket}/{key}"
    return Input(kind=_kind_by_ext(key) or JobKind.IMAGE, display=uri, ext=os.path.splitext(key)[1].lower(),
                 s3=S3Object(bucket, key), size=size, identity=identity("s3", uri, size, etag.strip('"')))


def is_prefix(uri: str) -> bool:
    """``s3://bucket/`` or ``s3://bucket/some/folder/``: every object under it."""
    rest = uri[len("s3://"):]
    return "/" not in rest or rest.endswith("/")


def _s3_key(uri: str, settings, storage: Storage | None) -> Input:
    """An object named by its key: refused outside the allowed prefixes; its size and ETag are
    read with one HEAD (which also says at once when it does not exist). Without ``storage``
    (checks without a server) its identity is its URI alone."""
    obj = parse_s3_uri(uri)
    reason = input_policy.refusal(obj.bucket, obj.key, settings.input_prefixes, settings.s3_bucket)
    if reason:
        raise InputError(reason)
    size, etag = storage.head(obj) if storage is not None else (0, "")
    return _object(obj.bucket, obj.key, size, etag)


def _s3_prefix(uri: str, settings, storage: Storage) -> Iterator[Input]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    reason = input_policy.prefix_refusal(bucket, prefix, settings.input_prefixes, settings.s3_bucket)
    if reason:
        raise InputError(reason)
    found = False
    for key, size, etag in storage.list_objects(bucket, prefix):
        if _kind_by_ext(key) is None or input_policy.refusal(bucket, key, settings.input_prefixes, settings.s3_bucket):
            continue
        found = True
        yield _object(bucket, key, size, etag)
    if not found:
        raise InputError(f"{uri}: no image or video objects under this prefix")


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


def _directory(path: Path, follow_symlinks: bool) -> Iterator[tuple[Path, Path]]:
    root = path.resolve()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            entry = Path(dirpath) / name
            resolved = _scanned(entry, root, follow_symlinks)
            if resolved is not None:
                yield entry, resolved


def check_explicit(args: list[str], follow_symlinks: bool = False, max_bytes: int | None = None,
                   settings=None) -> None:
    """Refuse, before anything is submitted, what the command line names that cannot be submitted:
    a missing path, a file that is not an image or video (or larger than ``max_bytes``), a
    directory symlink not to follow, an ``s3://`` key or prefix outside ``settings``' input
    prefixes."""
    for arg in args:
        if arg.startswith("s3://"):
            if is_prefix(arg):
                bucket, _, prefix = arg[len("s3://"):].partition("/")
                reason = input_policy.prefix_refusal(bucket, prefix, settings.input_prefixes, settings.s3_bucket) \
                    if settings is not None else None
            else:
                obj = parse_s3_uri(arg)
                reason = input_policy.refusal(obj.bucket, obj.key, settings.input_prefixes, settings.s3_bucket) \
                    if settings is not None else None
            if reason:
                raise InputError(reason)
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            if path.is_symlink() and not follow_symlinks:
                raise InputError(f"{arg}: a symlink to a directory; not followed without --follow-symlinks")
        elif path.is_file():
            item = _file(path.resolve(), arg, explicit=True)
            if max_bytes is not None:
                limits.check_bytes(item.size, max_bytes, what=arg)
        elif glob.has_magic(arg):
            continue
        elif path.exists():
            raise InputError(f"{arg}: not a regular file")
        else:
            raise InputError(f"{arg}: no such file or directory")


def iter_inputs(args: list[str], settings, storage: Storage | None = None,
                follow_symlinks: bool = False) -> Iterator[Input]:
    """Each argument's inputs, in order, lazily. Raises InputError for a directory, glob or prefix
    that holds no image or video, and for ``s3://`` inputs outside the allowed prefixes; call
    ``check_explicit`` first for the rest. Duplicates are left to the batch (same identity)."""
    for arg in args:
        if arg.startswith("s3://"):
            if is_prefix(arg):
                if storage is None:
                    raise InputError(f"{arg}: listing a prefix needs storage access")
                yield from _s3_prefix(arg, settings, storage)
            else:
                yield _s3_key(arg, settings, storage)
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            found = False
            for entry, resolved in _directory(path, follow_symlinks):
                item = _file(resolved, str(entry), explicit=False)
                if item is not None:
                    found = True
                    yield item
            if not found:
                raise InputError(f"{arg}: no images or videos in this directory")
        elif path.is_file():
            # A symlink named explicitly: followed to its regular-file target, which must sniff.
            yield _file(path.resolve(), arg, explicit=True)
        elif glob.has_magic(arg):
            found = False
            # lazily, in the file system's order (a sorted glob would hold every match in memory)
            for match in glob.iglob(os.path.expanduser(arg), recursive=True):
                resolved = _scanned(Path(match), None, follow_symlinks)
                item = _file(resolved, match, explicit=False) if resolved is not None else None
                if item is not None:
                    found = True
                    yield item
            if not found:
                raise InputError(f"{arg}: the pattern matches no image or video")
        else:
            raise InputError(f"{arg}: no such file or directory")


def expand(args: list[str], settings=None, storage: Storage | None = None, follow_symlinks: bool = False) -> list[Input]:
    """``check_explicit`` then every input of ``args`` once, as a list (for a few inputs;
    submissions stream ``iter_inputs`` and leave duplicates to the batch). ``settings``: the input
    policy's (default: the defaults')."""
    if settings is None:
        from segq.settings import Settings

        settings = Settings()
    check_explicit(args, follow_symlinks, settings.max_input_bytes, settings)
    return list({i.identity: i for i in iter_inputs(args, settings, storage, follow_symlinks)}.values())
