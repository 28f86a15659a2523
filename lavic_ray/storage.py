"""The storage root: a POSIX folder (a shared volume on a cluster) or an object store (``s3://``, ``gs://``).

Paths are resolved through pyarrow's filesystems, as Ray Train resolves its ``storage_path``; an S3 endpoint of
your own (MinIO, a test server) is given as ``AWS_ENDPOINT_URL``, credentials as the SDKs read them.

Under an object store every process works in a **mirror**: a local folder whose layout is the bucket's
(``<LAVIC_STORAGE_CACHE>/<scheme>/<bucket>/<key>``, the same path on every node), so the artifact paths a step hands
to Ray workers elsewhere name the same objects there. A step writes its outputs in the mirror and
:func:`publish` uploads them; a step that reads an artifact calls :func:`fetch` first, which downloads it from the
store unless the mirror already holds it. Both are no-ops for paths outside the mirror (a POSIX storage root), so
the code is the same for both kinds of storage. Ray Train writes its checkpoints to the store itself
(:func:`train_storage`), so a run resumes from any node.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from lavic_ray.errors import InvalidInput

#: URI schemes taken as object storage (anything else with ``://`` is refused; a plain path is POSIX)
REMOTE_SCHEMES = ("s3", "gs", "gcs")
#: where the mirror of every object store lives on a machine (the same path on every node)
CACHE_ENV = "LAVIC_STORAGE_CACHE"
#: written in a mirrored folder once all of it is downloaded
PULLED = ".lavic-fetched"


class StorageError(InvalidInput):
    """The storage root cannot be used (unreachable, not writable, unknown scheme)."""


def is_remote(root: str | Path) -> bool:
    """True for an object-store URI (``s3://...``, ``gs://...``)."""
    return isinstance(root, str) and "://" in root and root.split("://", 1)[0].lower() in REMOTE_SCHEMES


def _check_scheme(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{uri}: unknown storage scheme {scheme!r}; use a folder, or one of "
                           f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    if urlparse(uri).query:
        raise StorageError(f"{uri}: give the endpoint as AWS_ENDPOINT_URL, not in the URI")
    return scheme


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for an object-store URI."""
    import pyarrow.fs as pafs

    _check_scheme(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ... for bad URIs and missing credentials
        raise StorageError(f"{uri}: {e}") from None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "lavic-storage")


def mirror(uri: str) -> Path:
    """The local folder that mirrors an object-store URI."""
    scheme = _check_scheme(uri)
    rest = uri.split("://", 1)[1].strip("/")
    return cache_root() / ("gs" if scheme == "gcs" else scheme) / rest


def uri_of(path: str | Path) -> str | None:
    """The object-store URI a mirror path stands for (None: a path outside the mirror)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(cache_root()))
    except ValueError:
        return None
    if len(rel.parts) < 2 or rel.parts[0] not in ("s3", "gs"):
        return None
    return f"{rel.parts[0]}://{'/'.join(rel.parts[1:])}"


def local(path_or_uri: str | Path) -> Path:
    """A path to work with: the mirror of a URI, or the path itself."""
    return mirror(str(path_or_uri)) if is_remote(str(path_or_uri)) else Path(path_or_uri)


def _fs_path(uri: str):
    fs, path = filesystem(uri)
    return fs, path.rstrip("/")


def exists(path: str | Path) -> bool:
    """Whether a file or folder exists: in the mirror, or else in the store it mirrors."""
    p = local(path)
    if p.exists():
        return True
    uri = uri_of(p)
    if uri is None:
        return False
    import pyarrow.fs as pafs

    fs, key = _fs_path(uri)
    info = fs.get_file_info(key)
    if info.type != pafs.FileType.NotFound:
        return True
    return bool(fs.get_file_info(pafs.FileSelector(key, allow_not_found=True, recursive=False)))


def fetch(path: str | Path, refresh: bool = False) -> Path:
    """The local path of an artifact, downloaded from the object store it mirrors unless the mirror has it
    (``refresh``: download it again, for a file another node keeps rewriting). Outside the mirror: the path."""
    p = local(path)
    uri = uri_of(p)
    if uri is None:
        return p
    if not refresh and ((p.is_file()) or (p / PULLED).is_file()):
        return p
    import pyarrow.fs as pafs

    fs, key = _fs_path(uri)
    info = fs.get_file_info(key)
    if info.type == pafs.FileType.File:
        _download(fs, key, p)
        return p
    found = fs.get_file_info(pafs.FileSelector(key, allow_not_found=True, recursive=True))
    if not found:
        return p  # nothing there (the caller says what is missing)
    for f in found:
        if f.type == pafs.FileType.File:
            _download(fs, f.path, p / f.path[len(key) + 1:])
    (p / PULLED).write_text("")
    return p


def _download(fs, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    with fs.open_input_stream(key) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
    tmp.replace(dest)


def publish(path: str | Path) -> None:
    """Upload a file or folder of the mirror to the object store it mirrors (outside the mirror: nothing to do)."""
    p = Path(path)
    uri = uri_of(p)
    if uri is None or not p.exists():
        return
    fs, key = _fs_path(uri)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and f.name != PULLED]
    for f in files:
        dest = key if f == p else f"{key}/{f.relative_to(p).as_posix()}"
        with open(f, "rb") as src, fs.open_output_stream(dest) as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
    if p.is_dir():
        (p / PULLED).write_text("")  # the mirror holds all of it


def train_storage(path: str | Path) -> dict:
    """Ray Train's ``storage_path`` (and ``storage_filesystem``) for a run folder: the object store itself for a
    mirror path, so its checkpoints are written there and a restarted run finds them from any node."""
    uri = uri_of(path)
    if uri is None:
        return {"storage_path": str(path)}
    fs, key = _fs_path(uri)
    return {"storage_path": key, "storage_filesystem": fs}


def probe_writable(root: str | Path, name: str) -> None:
    """Write the file ``name`` under ``root`` and remove it again; :class:`StorageError` says why it could not."""
    if is_remote(str(root)):
        fs, base = _fs_path(str(root))
        path = f"{base}/{name}"
        try:
            with fs.open_output_stream(path) as fh:
                fh.write(b"lavic-ray preflight\n")
            fs.delete_file(path)
        except Exception as e:  # noqa: BLE001 - any failure means the root is unusable; say which
            raise StorageError(f"{root} is not writable: {e}") from None
        return
    if "://" in str(root):
        _check_scheme(str(root))
    base = Path(root).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / name
        probe.write_text("lavic-ray preflight\n")
        probe.unlink()
    except OSError as e:
        raise StorageError(f"{base} is not writable: {e.strerror or e}") from None
