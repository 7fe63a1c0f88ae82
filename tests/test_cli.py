"""How every ``darknet-py`` command stops: one line on stderr and an exit code.

Run through a real ``python -m darknet_py`` process where the behaviour is the
process's (a closed pipe, the exit code); in-process where only ``main``'s
handling is under test (Ctrl-C).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darknet_py.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from darknet_py.cli import inspect as cli_inspect
from darknet_py.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, stdout=subprocess.PIPE, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "darknet_py", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=timeout, cwd=REPO)


def test_closed_pipe_is_a_quiet_exit():
    """``inspect --json | head``: the reader is gone before anything is written."""
    r, w = os.pipe()
    os.close(r)  # every write to w now fails with EPIPE
    try:
        proc = run_cli("inspect", "cfg/yolov3-tiny.cfg", "--json", stdout=w)
    finally:
        os.close(w)
    assert proc.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" line
    assert proc.returncode == EXIT_BROKEN_PIPE == 141


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    proc = run_cli("inspect", str(tmp_path / "missing.cfg"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"darknet-py inspect: error: {tmp_path / 'missing.cfg'}: cannot read cfg: No such file or directory"]


def test_unwritable_output_is_one_line(tmp_path, capsys):
    """An OSError on a file the user named (the --json target's folder is a file)."""
    from tests.tiny_files import tiny_model_files
    cfg, weights, image = tiny_model_files(tmp_path)
    out = image / "dets.json"
    assert cli_main(["detect", str(cfg), str(weights), str(image), "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darknet-py detect: error: ") and str(image) in err[0]


def test_ctrl_c_exits_130(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_inspect, "main", interrupted)
    assert cli_main(["inspect", "x.cfg"]) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "darknet-py inspect: interrupted\n"


def test_our_warnings_are_one_line(tmp_path):
    """A cfg option no builder reads: darknet's option_unused, one line per option."""
    cfg = tmp_path / "u.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n"
                   "[convolutional]\nfilters=2\nsize=1\nstride=1\nactivation=linear\nbogus_key=3\n")
    proc = run_cli("inspect", str(cfg))
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "bogus_key" in ln]
    assert len(warn) == 1 and warn[0].startswith("darknet-py inspect: warning: "), proc.stderr
    assert "Warning(" not in proc.stderr and "warnings.warn" not in proc.stderr


@pytest.mark.parametrize("argv", [["nope"], []])
def test_usage_errors_exit_2(argv, capsys):
    assert cli_main(argv) == 2
