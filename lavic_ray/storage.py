"""The storage root: a POSIX folder (a shared volume on a cluster) or an object store URI (``s3://``, ``gs://``).

Paths are resolved through pyarrow's filesystems, as Ray Train resolves its ``storage_path``: an S3 endpoint of
your own (MinIO, a test server) is given the same way, ``s3://bucket/prefix?endpoint_override=host:port&scheme=http``,
or with ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

from pathlib import Path

from lavic_ray.errors import InvalidInput

#: URI schemes taken as object storage (anything else with ``://`` is refused; a plain path is POSIX)
REMOTE_SCHEMES = ("s3", "gs", "gcs")


class StorageError(InvalidInput):
    """The storage root cannot be used (unreachable, not writable, unknown scheme)."""


def is_remote(root: str | Path) -> bool:
    """True for an object-store URI (``s3://...``, ``gs://...``)."""
    return isinstance(root, str) and "://" in root and root.split("://", 1)[0].lower() in REMOTE_SCHEMES


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for an object-store URI."""
    import pyarrow.fs as pafs

    scheme = uri.split("://", 1)[0].lower()
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{uri}: unknown storage scheme {scheme!r}; use a folder, or one of "
                           f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ... for bad URIs and missing credentials
        raise StorageError(f"{uri}: {e}") from None


def probe_writable(root: str | Path, name: str) -> None:
    """Write the file ``name`` under ``root`` and remove it again; :class:`StorageError` says why it could not."""
    if is_remote(str(root)):
        fs, base = filesystem(str(root))
        path = f"{base.rstrip('/')}/{name}"
        try:
            with fs.open_output_stream(path) as fh:
                fh.write(b"lavic-ray preflight\n")
            fs.delete_file(path)
        except Exception as e:  # noqa: BLE001 - any failure means the root is unusable; say which
            raise StorageError(f"{root} is not writable: {e}") from None
        return
    if "://" in str(root):
        raise StorageError(f"{root}: unknown storage scheme; use a folder, or one of "
                           f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    base = Path(root).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / name
        probe.write_text("lavic-ray preflight\n")
        probe.unlink()
    except OSError as e:
        raise StorageError(f"{base} is not writable: {e.strerror or e}") from None
