"""The console of long commands: step lines and bars for a person, the rest to the log file."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

from lavic_ray import console


def test_steps_and_progress_lines_go_to_the_console_and_the_log():
    err, out = io.StringIO(), io.StringIO()
    c = console.Console(out, err)
    with c.step("stage 1", 3, 8):
        with c.progress(4, "stage 1", "step") as bar:
            bar.update(4)
    lines = err.getvalue().splitlines()
    assert lines[0] == "[3/8] stage 1 ..." and lines[-1].startswith("[3/8] stage 1: done in ")
    try:
        with c.step("stage 2"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "stage 2: failed after" in err.getvalue()
    assert out.getvalue() == ""  # results only


def test_session_sends_logging_to_the_file_and_keeps_the_console(tmp_path, capsys):
    log_file = tmp_path / "logs" / "run.log"
    with console.session(log_file) as c:
        assert console.get() is c
        logging.getLogger("lavic_ray.somewhere").info("a detail for the log")
        logging.getLogger("some.library").info("library chatter")
        c.line("a line for the person")
    assert console.get() is not c  # restored
    text = log_file.read_text()
    assert "a detail for the log" in text and "library chatter" in text and "a line for the person" in text
    shown = capsys.readouterr().err
    assert "a line for the person" in shown and f"full log: {log_file}" in shown
    assert "a detail for the log" not in shown and "library chatter" not in shown


def test_watch_follows_a_progress_file(tmp_path):
    err = io.StringIO()
    c = console.Console(io.StringIO(), err)
    p = tmp_path / "progress.json"

    def writer():
        for step in (1, 2, 3):
            p.write_text(json.dumps({"step": step, "total": 3, "status": f"loss {1 / step:.2f}"}))
            time.sleep(0.15)

    with c.watch(p, "stage 2 lavic", poll_s=0.05):
        t = threading.Thread(target=writer)
        t.start()
        t.join()
        time.sleep(0.2)
    assert "stage 2 lavic" in err.getvalue() and "3/3" in err.getvalue()


def test_a_ray_task_process_writes_our_info_lines_to_its_stderr_once():
    """The small-model build runs as a Ray task; its lines reach the command's log only through the task's
    stderr (Ray forwards it to the driver). A fresh process stands in for the task's worker process."""
    import subprocess
    import sys

    code = ("import logging; from lavic_ray.console import worker_logging; worker_logging(); worker_logging(); "
            "logging.getLogger('lavic_ray.model.small').info('epoch %d/%d', 1, 2); "
            "logging.getLogger('lavic_ray.model.small').debug('not this')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [ln for ln in err.splitlines() if "lavic_ray.model.small" in ln]
    assert len(lines) == 1 and lines[0].endswith("INFO lavic_ray.model.small: epoch 1/2")


def test_off_a_terminal_progress_is_a_plain_line_now_and_then(monkeypatch):
    """CI or `> log`: no carriage-return frames, a line every PLAIN_EVERY_S seconds and one at the end."""
    err = io.StringIO()
    c = console.Console(io.StringIO(), err)
    assert not c.tty
    with c.progress(4, "stage 1", "step") as bar:
        for _ in range(4):
            bar.update(1)
    assert "\r" not in err.getvalue() and err.getvalue().splitlines() == [err.getvalue().splitlines()[-1]]
    assert err.getvalue().startswith("  stage 1: 4/4 steps (100%), ")
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    err.truncate(0)
    err.seek(0)
    with c.progress(3, "evaluate lavic", "conversation") as bar:
        bar.set_postfix_str("x" * 300, refresh=False)
        for _ in range(3):
            bar.update(1)
    lines = err.getvalue().splitlines()
    assert len(lines) == 3 and all(len(line) <= 160 for line in lines) and "ETA" in lines[0]


def test_a_resumed_runs_eta_counts_only_the_steps_this_run_made(monkeypatch):
    """A run resumed at step 150 of 240 that makes 10 steps in 40 s has 80 left: 5m20s, not the 21 s that 160 steps
    in 40 s would say."""
    clock = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    err = io.StringIO()
    c = console.Console(io.StringIO(), err)
    with c.progress(None, "stage 2 lavic", "step") as bar:
        console._rebase(bar, 150)
        bar.total = 240
        clock[0] += 40
        bar.n = 160
        bar.refresh()
    assert "160/240 steps (67%), 40s, ETA 5m20s" in err.getvalue().splitlines()[0]


def test_the_eta_of_a_builds_next_phase_counts_from_that_phases_first_step(monkeypatch):
    """The small model's build aligns its projector (300 fast steps), then runs 60 slow full-token steps: the second
    phase's ETA is its own rate (5 steps in 32 s, 51 left: 5m26s), not one from steps of the first."""
    clock = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    err = io.StringIO()
    c = console.Console(io.StringIO(), err)
    seen = None
    with c.progress(None, "small model", "step") as bar:
        for dt, p in ((0, {"step": 12, "total": 300}), (60, {"step": 300, "total": 300}), (30, {"step": 4, "total": 60}),
                      (32, {"step": 9, "total": 60})):
            clock[0] += dt
            console._show(bar, seen, p)
            seen = p
    assert "9/60 steps (15%), 2m02s, ETA 5m26s" in err.getvalue().splitlines()[-1], err.getvalue()
