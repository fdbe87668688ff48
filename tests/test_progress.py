"""Long work shows live bars with an ETA in a terminal and plain log lines when piped (issue 42, item 5)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("progress_run.py")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LATENTDEFENCE_PROGRESS"}   # conftest turns bars off
    env.update(PYTHONPATH=os.pathsep.join([str(SCRIPT.parent), env.get("PYTHONPATH", "")]), COLUMNS="120",
               OMP_NUM_THREADS="1", TERM="xterm")
    return env


def _in_terminal(tmp_path: Path) -> str:
    """The script's output as a terminal shows it (stdout and stderr on one pty)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "f")], stdin=follower, stdout=follower,
                            stderr=follower, env=_env(tmp_path), close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:                 # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _in_terminal(tmp_path_factory.mktemp("tty"))


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("pipe")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp / "f")], capture_output=True, text=True,
                          env=_env(tmp), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _screen(output: str) -> list[str]:
    """The lines a terminal ends up showing: text, carriage return, newline, cursor up and clear line are obeyed,
    other escape sequences (colours, cursor visibility) dropped."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", output):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        else:
            line = lines[row].ljust(col)
            lines[row], col = line[:col] + token + line[col + len(token):], col + len(token)
    return lines


def _bars(lines: list[str]) -> set[str]:
    """The descriptions of the bars in `lines` (a bar: description, count done/total, elapsed, 'eta', remaining)."""
    found = set()
    for line in lines:
        match = re.match(r"\s*(.+?)\s+[━╸╺ ]*\s*\d+/\d+ \d+:\d\d:\d\d eta (?:\d+:\d\d:\d\d|-:--:--)", line)
        if match:
            found.add(match.group(1).strip())
    return found


def test_a_terminal_shows_a_live_bar_with_an_eta_for_training_each_attack_and_the_evaluation(terminal: str) -> None:
    drawn = _bars(re.split(r"[\r\n]", ANSI.sub("", terminal)))      # every frame drawn, not only the last one
    assert {"epoch 1/1", "attack stages", "pgd on F", "autoattack on F", "selective on softmax",
            "orthogonal on softmax", "square on softmax"} <= drawn, drawn
    assert {"epoch 1/1", "attack stages"} <= _bars(_screen(terminal))  # the outer bars stay, finished
    assert "\x1b[2K" in terminal                                       # redrawn in place, not printed once


def test_a_terminal_keeps_log_lines_whole_above_the_bars(terminal: str) -> None:
    screen = _screen(terminal)
    logged = [line for line in screen if "latentdefence." in line]
    assert any("stage attack_pgd: finished" in line for line in logged), screen
    assert all(" eta " not in line and "━" not in line for line in logged), logged
    assert not any("attack stages 1/" in line for line in screen)      # on a terminal the bar says it, not a log


def test_a_pipe_gets_plain_log_lines_and_no_bars(piped: str) -> None:
    assert "\x1b[" not in piped and not _bars(piped.splitlines())
    for expected in ("latentdefence.training.loop: epoch 1/1", "latentdefence.progress: attack stages 1/5: pgd on F",
                     "attack stages 5/5: square on softmax", "stage attack_pgd: finished"):
        assert expected in piped, expected
