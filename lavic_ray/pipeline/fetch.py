"""Fetching images by URL for users who still have to crawl: bounded, timed out, retried with backoff.

Only the standard library (urllib): no extra dependency. What is retried: timeouts, connection
errors, HTTP 5xx and 429, and bodies shorter than their Content-Length (truncated transfers).
What is not: other 4xx (a 404 will not appear on a second try), and bodies over ``max_bytes``.
A fetched file is written atomically (temporary name, then rename), so an interrupted run
never leaves a half image that a rerun would take for a finished one.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

USER_AGENT = "lavic-ray/0.1 (image preprocessing)"


@dataclass(frozen=True)
class FetchResult:
    url: str
    path: Path | None
    error: str | None = None
    attempts: int = 1


class _Retryable(Exception):
    pass


def _get(url: str, timeout: float, max_bytes: int) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and int(length) > max_bytes:
                raise ValueError(f"body of {int(length)} bytes exceeds the {max_bytes}-byte limit")
            body = resp.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise ValueError(f"body exceeds the {max_bytes}-byte limit")
            if length is not None and len(body) < int(length):
                raise _Retryable(f"truncated body: {len(body)} of {length} bytes")
            return body
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code}") from e
        raise ValueError(f"HTTP {e.code}") from e
    except http.client.IncompleteRead as e:
        raise _Retryable(f"truncated body: {len(e.partial)} bytes, then the connection closed") from e
    except (socket.timeout, TimeoutError) as e:
        raise _Retryable(f"timed out after {timeout:g} s") from e
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable(f"connection error: {getattr(e, 'reason', e)}") from e


def fetch(url: str, dest: str | Path, timeout: float = 10.0, retries: int = 3, backoff_s: float = 0.5,
          max_bytes: int = 20 * 2**20) -> FetchResult:
    """Download ``url`` to ``dest`` (skipped when ``dest`` exists); never raises.

    Args:
        timeout: Seconds per attempt (connect and each read).
        retries: Further attempts after the first, for retryable failures.
        backoff_s: First wait between attempts; doubles each time.
        max_bytes: Refuse bodies larger than this.
    """
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        return FetchResult(url, dest, attempts=0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            body = _get(url, timeout, max_bytes)
        except _Retryable as e:
            error = str(e)
            log.debug("fetch %s: %s (attempt %d/%d)", url, error, attempt + 1, retries + 1)
            continue
        except ValueError as e:
            return FetchResult(url, None, f"fetch failed: {e}", attempt + 1)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(body)
        tmp.replace(dest)
        return FetchResult(url, dest, attempts=attempt + 1)
    return FetchResult(url, None, f"fetch failed after {retries + 1} attempts: {error}", retries + 1)


def fetch_all(jobs: list[tuple[str, Path]], concurrency: int = 8, **kwargs) -> list[FetchResult]:
    """Fetch ``(url, dest)`` pairs with at most ``concurrency`` requests in flight; results in order."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(lambda j: fetch(j[0], j[1], **kwargs), jobs))
