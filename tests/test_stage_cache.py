"""Stage cache: a completed stage is reused, an interrupted one reruns, and stages are timed and logged."""

from __future__ import annotations

import logging

import pytest

from latentdefence._timing import StageTimer
from latentdefence.experiments.cache import ensure_stage, is_complete, settings_key


def test_completed_stage_is_not_rebuilt(tmp_path):
    calls = []
    first = ensure_stage("toy", {"a": 1}, lambda d: calls.append(d), root=tmp_path)
    second = ensure_stage("toy", {"a": 1}, lambda d: calls.append(d), root=tmp_path)
    assert first == second and len(calls) == 1 and is_complete(first)


def test_other_settings_get_their_own_stage(tmp_path):
    assert settings_key({"a": 1}) != settings_key({"a": 2})
    assert ensure_stage("toy", {"a": 1}, lambda d: None, root=tmp_path) != \
        ensure_stage("toy", {"a": 2}, lambda d: None, root=tmp_path)


def test_interrupted_stage_reruns(tmp_path):
    def crash(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_stage("toy", {"a": 1}, crash, root=tmp_path)
    calls = []
    path = ensure_stage("toy", {"a": 1}, lambda d: calls.append(d), root=tmp_path)
    assert calls == [path] and is_complete(path)


def test_stage_timer_accumulates_and_logs(caplog):
    timer = StageTimer()
    with caplog.at_level(logging.INFO, logger="latentdefence.stages"):
        with timer.timed("encoders"):
            pass
        with timer.timed("encoders"):
            pass
    assert set(timer.wall_time_s) == {"encoders"} and timer.wall_time_s["encoders"] >= 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("stage encoders: started") == 2
    assert sum(m.startswith("stage encoders: finished in") for m in messages) == 2


def test_marker_keeps_the_build_time_for_runs_that_reuse_the_stage(tmp_path):
    from latentdefence.experiments.cache import build_seconds

    path = ensure_stage("toy", {"a": 1}, lambda d: None, root=tmp_path)
    first = build_seconds(path)
    assert first is not None and first >= 0
    assert build_seconds(ensure_stage("toy", {"a": 1}, lambda d: None, root=tmp_path)) == first


def test_progress_steps_are_logged_when_bars_are_off(caplog, monkeypatch):
    from latentdefence._progress import advance, make_progress

    monkeypatch.setenv("LATENTDEFENCE_PROGRESS", "0")
    with caplog.at_level(logging.INFO, logger="latentdefence.progress"), make_progress() as progress:
        task = progress.add_task("generator", total=2, status="")
        advance(progress, task, "loss 0.5")
        advance(progress, task, "loss 0.4")
    assert [r.getMessage() for r in caplog.records] == ["generator 1/2: loss 0.5", "generator 2/2: loss 0.4"]


def test_long_bars_log_every_tenth_step_only(caplog, monkeypatch):
    from latentdefence._progress import advance, make_progress

    monkeypatch.setenv("LATENTDEFENCE_PROGRESS", "0")
    with caplog.at_level(logging.INFO, logger="latentdefence.progress"), make_progress() as progress:
        task = progress.add_task("encoder", total=100, status="")
        for _ in range(100):
            advance(progress, task, "")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"encoder {10 * i}/100" for i in range(1, 11)]


_RACE = """
import sys, time
from pathlib import Path
from latentdefence.experiments.cache import ensure_stage
root, me = Path(sys.argv[1]), sys.argv[2]

def build(path):
    while len(list(root.glob("started-*"))) < 2:   # the other process is about to ask for this stage
        time.sleep(0.05)
    time.sleep(0.5)
    with open(root / "builds", "a") as fh:
        fh.write(me + "\\n")

(root / f"started-{me}").touch()
ensure_stage("toy", {"a": 1}, build, root=root / "cache")
"""


def test_two_processes_needing_one_stage_build_it_once(tmp_path):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path), str(i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len((tmp_path / "builds").read_text().split()) == 1
    assert is_complete(next((tmp_path / "cache").glob("toy-*")))
