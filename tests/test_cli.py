"""How every ``darknet-py`` command stops: one line on stderr and an exit code.

Run through a real ``python -m darknet_py`` process where the behaviour is the
process's (a closed pipe, Ctrl-C, the exit code, a terminal's progress bar).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darknet_py.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
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


def test_ctrl_c_exits_130(tmp_path):
    """Ctrl-C while detect works through a folder: one line, exit 130, no traceback."""
    import signal

    from tests.tiny_files import tiny_model_files
    cfg, weights, image = tiny_model_files(tmp_path)
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(2000):
        (folder / f"{k:04d}.png").write_bytes(image.read_bytes())
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "darknet_py", "detect", str(cfg), str(weights),
                             str(folder), "--batch", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # detect is running: the first image is done
    assert first.startswith(str(folder / "0000.png"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert err == "darknet-py detect: interrupted\n"


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


# ------------------------------------------------------------ progress bars
def run_with_tty_stderr(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m darknet_py ARGS`` whose stderr
    is a terminal (a pty) and whose stdout is a pipe."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "darknet_py", *args], stdout=subprocess.PIPE,
                            stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    import threading
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # both ends drained
    reader.start()
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the command closed its end
            break
        if not data:
            break
        chunks.append(data)
    reader.join(timeout)
    proc.wait(timeout)
    os.close(master)
    return proc.returncode, b"".join(out).decode(), b"".join(chunks).decode(errors="replace")


def test_detect_shows_a_bar_on_a_terminal_and_keeps_stdout_clean(tmp_path):
    import json

    from tests.tiny_files import tiny_model_files
    cfg, weights, image = tiny_model_files(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.png").write_bytes(image.read_bytes())
    (folder / "3.png").write_bytes(b"broken")
    rc, out, err = run_with_tty_stderr("detect", str(cfg), str(weights), str(folder), "--json", "-",
                                       "--batch", "2")
    assert rc == 1
    got = json.loads(out)  # stdout is nothing but the JSON
    assert [os.path.basename(g["image"]) for g in got] == ["0.png", "1.png", "2.png"]
    assert "detect: 100%" in err and "4/4" in err and "img/s" in err  # tqdm's bar with rate
    assert err.count("3.png: not a readable image") == 1
    rc, out, err = run_with_tty_stderr("detect", str(cfg), str(weights), str(folder), "--json", "-",
                                       "--quiet")
    assert rc == 1 and "%|" not in err and len(json.loads(out)) == 3
    proc = run_cli("detect", str(cfg), str(weights), str(folder), "--json", "-")  # stderr a pipe
    assert "%|" not in proc.stderr and proc.stderr.count("3.png") == 1


def test_map_bar_and_quiet(tmp_path):
    from darknet_py.data import make_synthetic_dataset
    from darknet_py.model import Darknet
    data = make_synthetic_dataset(tmp_path / "syn", n_train=1, n_valid=3, size=64, seed=5,
                                  progress=False)
    cfg = REPO / "cfg" / "tiny-shapes.cfg"
    weights = tmp_path / "w.weights"
    Darknet(cfg).save_weights(weights)
    rc, out, err = run_with_tty_stderr("map", str(data), str(cfg), str(weights), "--no-coco")
    assert rc == 0 and "map: 100%" in err and "3/3" in err and "mean average precision" in out
    rc, out, err = run_with_tty_stderr("map", str(data), str(cfg), str(weights), "--no-coco", "--quiet")
    assert rc == 0 and "%|" not in err and "mean average precision" in out


def test_dataset_generation_bar(tmp_path, capsys):
    from darknet_py.data import make_synthetic_dataset
    make_synthetic_dataset(tmp_path / "a", n_train=3, n_valid=2, size=32, progress=True)
    err = capsys.readouterr().err
    assert "synthetic dataset: 100%" in err and "5/5" in err
    make_synthetic_dataset(tmp_path / "b", n_train=3, n_valid=2, size=32)  # stderr is not a terminal
    assert capsys.readouterr().err == ""
