"""What a person running a long command sees, and where everything else goes.

A long command (the quickstart, a training stage, a pipeline job) shows one line per
step with its elapsed time and, for long steps, a progress bar with an ETA (tqdm).
Everything else - our own log lines, Ray's and DeepSpeed's output, library warnings,
the output of Ray's worker processes and of C++ code - goes to a log file under the work
directory: :func:`session` points this process's stdout and stderr (file descriptors 1
and 2, so child processes and native code follow) at the log file and keeps the terminal
for the :class:`Console`. ``--verbose`` leaves both streams as they are and shows it all.

Code deep in the package reports progress through :func:`get` (the active console; a
quiet one when no command set one up), the way it logs through :mod:`logging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lavic_ray import storage

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries whose INFO lines are chatter even in a log file.
NOISY = ("sentence_transformers", "httpx", "urllib3", "filelock", "fsspec")


def fmt_seconds(s: float) -> str:
    """``75.2`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Console:
    """Step lines and progress bars for a person; nothing else.

    Args:
        out: Where results go (the command's stdout).
        err: Where step lines, bars and errors go (the terminal's stderr).
        enabled: False prints nothing (library use, tests).
    """

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None, enabled: bool = True):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.err, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._rows: set[int] = set()

    def line(self, text: str) -> None:
        """A line for the person (also logged)."""
        log.info("%s", text)
        if self.enabled:
            with self._lock:
                print(text, file=self.err, flush=True)

    @contextlib.contextmanager
    def step(self, label: str, index: int | None = None, total: int | None = None) -> Iterator[None]:
        """``[3/8] stage 1`` ... ``[3/8] stage 1: done in 4m27s`` (or ``failed after``)."""
        head = f"[{index}/{total}] {label}" if index is not None and total else label
        self.line(f"{head} ...")
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.line(f"{head}: failed after {fmt_seconds(time.monotonic() - t0)}")
            raise
        self.line(f"{head}: done in {fmt_seconds(time.monotonic() - t0)}")

    @contextlib.contextmanager
    def progress(self, total: int | None, desc: str, unit: str = "it"):
        """A progress bar with an ETA while the block runs: tqdm on a terminal (bars of concurrent steps, such as
        stage-2 runs side by side, take a row each); in a log or a pipe (CI, ``> log``), a plain line every
        ``PLAIN_EVERY_S`` seconds and at the end, never carriage-return frames."""
        from tqdm import tqdm

        if not self.tty:
            bar = _PlainProgress(self, total, desc, unit)
            try:
                yield bar
            finally:
                bar.close()
            return
        with self._lock:
            row = min(set(range(len(self._rows) + 1)) - self._rows)
            self._rows.add(row)
        bar = tqdm(total=total, desc=f"  {desc}", unit=unit, file=self.err, disable=not self.enabled, leave=False,
                   dynamic_ncols=True, mininterval=0.5, position=row)
        try:
            yield bar
        finally:
            bar.close()
            with self._lock:
                self._rows.discard(row)

    @contextlib.contextmanager
    def watch(self, progress_file: Path, desc: str, poll_s: float = 2.0) -> Iterator[None]:
        """A bar that follows a training run's ``progress.json`` (written by the run's rank 0, which
        may be another process or another node) while the block runs."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()

        def follow():
            seen = None
            with self.progress(None, desc, "step") as bar:
                while not stop.wait(poll_s):
                    try:  # under an object store: the copy rank 0 publishes
                        p = json.loads(storage.fetch(progress_file, refresh=True).read_text())
                    except (OSError, ValueError):
                        continue
                    if p != seen:
                        _show(bar, seen, p)
                        seen = p

        t = threading.Thread(target=follow, name=f"progress {desc}", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)


def _show(bar, seen: dict | None, p: dict) -> None:
    """Put progress ``p`` on ``bar``, after ``seen``. The rate (and the ETA) counts from the first step seen of each
    phase: a resumed run starts at its checkpoint's step, and the small model's build starts its next phase at step
    0 of another total."""
    if seen is None or p.get("total") != seen.get("total") or p.get("step", 0) < seen.get("step", 0):
        _rebase(bar, p.get("step", 0))
    bar.total = p.get("total")
    bar.n = p.get("step", 0)
    bar.set_postfix_str(p.get("status", ""), refresh=False)
    bar.refresh()


def _rebase(bar, n: int) -> None:
    """Count a bar's rate from step ``n`` now (tqdm's ``initial``): the steps before were done by an earlier run."""
    bar.n = bar.initial = n
    bar.start_t = bar._time() if hasattr(bar, "_time") else time.monotonic()


#: where progress is not on a terminal: a plain line this often (seconds)
PLAIN_EVERY_S = 30.0


class _PlainProgress:
    """tqdm's surface that a step uses (``update``, ``n``, ``total``, ``set_postfix_str``, ``refresh``, ``close``),
    written as a plain line now and then: ``  stage 1: 120/210 steps (57%), 4m10s, ETA 3m08s, loss 1.234``."""

    def __init__(self, console: Console, total: int | None, desc: str, unit: str):
        self.console, self.total, self.desc, self.unit = console, total, desc, unit
        self.n, self.initial, self.postfix = 0, 0, ""
        self.t0 = self.start_t = self.last = time.monotonic()
        self.printed_n = None

    def update(self, k: int = 1) -> None:
        self.n += k
        self.refresh()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s
        if refresh:
            self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PLAIN_EVERY_S:
            return
        self.last = now
        if self.printed_n == self.n and not force:
            return
        self.printed_n = self.n
        elapsed = now - self.t0
        done = f"{self.n}/{self.total} {self.unit}s" if self.total else f"{self.n} {self.unit}s"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.initial) / max(now - self.start_t, 1e-9)
        eta = f", ETA {fmt_seconds((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        line = f"  {self.desc}: {done}{pct}, {fmt_seconds(elapsed)}{eta}" + (f", {self.postfix}" if self.postfix else "")
        if self.console.enabled:
            with self.console._lock:
                print(line[:160], file=self.console.err, flush=True)

    def close(self) -> None:
        if self.n and self.printed_n != self.n:
            self.refresh(force=True)


def worker_logging() -> None:
    """Our INFO lines from a Ray task's process, on its stderr: Ray forwards that to the driver, whose
    :func:`session` keeps it in the command's log file. A task's process starts with Python's default
    (warnings only, no handler), so without this a step run as a Ray task - the small-model build, with its
    epoch losses - would leave none of its lines in the log. Once per process (Ray reuses its workers)."""
    pkg = logging.getLogger("lavic_ray")
    if getattr(pkg, "_lavic_worker_handler", False):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(LOG_FORMAT))
    pkg.addHandler(h)
    pkg.setLevel(logging.INFO)
    pkg.propagate = False  # a handler on the process's root logger (if any) would write each line twice
    pkg._lavic_worker_handler = True


_ACTIVE = Console(enabled=False)


def get() -> Console:
    """The console of the running command (a silent one when none was set up)."""
    return _ACTIVE


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def session(log_file: Path | None, verbose: bool = False, show: bool = True) -> Iterator[Console]:
    """Set up a command's output: its :class:`Console`, its log file, and where chatter goes.

    Args:
        log_file: Where the full log goes (created; appended to). None: no file, the log stays on stderr.
        verbose: Show everything on the terminal as it happens (debug level), as well as in the file.
        show: Step lines and bars on the terminal (False: results only).

    The process's file descriptors 1 and 2 are pointed at the log file (restored on exit) when
    ``log_file`` is given, not ``verbose``, and both streams are real files - so Ray's worker
    output, DeepSpeed's and C++ messages land there too; under a test harness that replaced the
    streams, only Python logging goes to the file.
    """
    global _ACTIVE
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    previous = _ACTIVE
    saved: list[tuple[int, int]] = []
    handlers: list[logging.Handler] = []
    out, err = sys.stdout, sys.stderr
    fh = None
    try:
        if log_file is not None:
            log_file = Path(log_file)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log_file, "a", buffering=1, encoding="utf-8", errors="replace")
        redirect = fh is not None and not verbose and _is_fd(sys.stdout, 1) and _is_fd(sys.stderr, 2)
        if redirect:
            sys.stdout.flush()
            sys.stderr.flush()
            out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
            err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(fh.fileno(), fd)
        root.handlers = []
        if fh is not None:
            h = logging.StreamHandler(fh)
            h.setFormatter(logging.Formatter(LOG_FORMAT))
            handlers.append(h)
        if verbose or fh is None:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter(LOG_FORMAT))
            if not verbose:
                h.setLevel(logging.WARNING)
            handlers.append(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        _quiet_libraries(verbose)
        if not verbose:
            import warnings

            logging.captureWarnings(True)  # a library's warnings: to the log, not the terminal
            warnings.simplefilter("default")
        _ACTIVE = Console(out, err, enabled=show)
        if log_file is not None and show:
            _ACTIVE.line(f"full log: {log_file}")
        yield _ACTIVE
    finally:
        _ACTIVE = previous
        for h in handlers:
            root.removeHandler(h)
        root.handlers = old_handlers
        root.setLevel(old_level)
        logging.captureWarnings(False)
        for fd, copy in saved:
            sys.stdout.flush() if fd == 1 else sys.stderr.flush()
            os.dup2(copy, fd)
            os.close(copy)
        if saved:
            out.close()
            err.close()
        if fh is not None:
            fh.close()


def _is_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False
