"""What the training script says before it trains, and refuses: labels it cannot
find, weights whose ``seen`` is past ``max_batches``, a burn-in that keeps the
rate near 0, a bad ``--resume`` file; the progress bar and chart; seeded
reruns; the whole-update sampler; the built-in job's defaults shipped with the
package."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from darknet_py import Darknet, Trainer
from darknet_py.cli import main as cli_main
from darknet_py.cli import train as train_cli
from darknet_py.data import (DarknetBatchSampler, DarknetUpdateSampler, make_synthetic_dataset,
                             write_data_file)
from darknet_py.errors import CheckpointError, DarknetError, DataError, TrainingError
from darknet_py.train.chart import layout_for, nice_ticks, render_chart
from darknet_py.weights import read_header
from tests.conftest import REPO

CFG = str(REPO / "cfg" / "tiny-shapes.cfg")
FAST = ["--cfg", CFG, "--width", "64", "--height", "64", "--batch", "4", "--workers", "0",
        "--no-progress", "--random", "0", "--burn-in", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_dataset(root / "ds", n_train=12, n_valid=4, size=64).parent


def _dataset(tmp_path: Path, shapes: Path, folder: str, drop: int = 0, empty: bool = False) -> str:
    """The 12 training images copied to ``tmp_path/<folder>/`` with their labels
    beside them (``drop`` of them removed, or all emptied); returns the .data file."""
    dest = tmp_path / folder
    dest.mkdir(parents=True)
    entries = []
    for k, png in enumerate(sorted((shapes / "train").glob("*.png"))):
        shutil.copy(png, dest / png.name)
        if k >= drop:
            text = "" if empty else png.with_suffix(".txt").read_text()
            (dest / png.name).with_suffix(".txt").write_text(text)
        entries.append(str(dest / png.name))
    (tmp_path / "train.txt").write_text("\n".join(entries) + "\n")
    shutil.copy(shapes / "synthetic.names", tmp_path / "x.names")
    data = tmp_path / "x.data"
    write_data_file(data, 4, str(tmp_path / "train.txt"), str(tmp_path / "train.txt"),
                    str(tmp_path / "x.names"), str(tmp_path / "backup"))
    return str(data)


def _run(data: str, backup: Path, *extra: str) -> int:
    return train_cli.main(["--data", data, "--backup", str(backup), *FAST, *extra])


# ------------------------------------------------------------------ labels
def test_yolo_files_next_to_the_pictures_stop_with_the_rule(shapes, tmp_path, capsys):
    """The reported case: YOLO files beside .../images/x.png, a pjreddie cfg, whose
    rule looks in .../labels/x.txt."""
    data = _dataset(tmp_path, shapes, "images")
    first = sorted((tmp_path / "images").glob("*.png"))[0]
    with pytest.raises(DataError) as e:
        _run(data, tmp_path / "b", "--max-batches", "1")
    msg = str(e.value)
    assert "none of the 12 images of the train list has a label file" in msg
    assert f"for {first} it looked for {tmp_path / 'labels' / first.with_suffix('.txt').name}" in msg
    assert "pjreddie darknet's rule" in msg and "'images'" in msg
    assert not (tmp_path / "b" / "tiny-shapes_final.weights").exists()
    # the command line: one line on stderr, exit status 1
    capsys.readouterr()
    assert cli_main(["train", "--data", data, "--backup", str(tmp_path / "b"), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has a label file" in err[0]


def test_missing_labels_counted_and_warned_before_training(shapes, tmp_path, capsys):
    data = _dataset(tmp_path, shapes, "obj", drop=3)
    boxes = sum(len(p.read_text().splitlines()) for p in (tmp_path / "obj").glob("*.txt"))
    assert _run(data, tmp_path / "b", "--max-batches", "1", "--log-every", "1") == 0
    out, err = capsys.readouterr()
    summary = f"12 training images, 9 with label files, {boxes} boxes"
    assert summary in out
    assert out.index(summary) < out.index("\n1: loss")  # said before the first iteration
    warning = re.search(r"WARNING: 3 of 12 images of the train list have no label file.*", err)
    assert warning and str(tmp_path / "obj" / "000000.txt") in warning.group(0)
    assert warning.group(0) in (tmp_path / "b" / "tiny-shapes_train.log").read_text()


def test_label_files_without_boxes_stop(shapes, tmp_path):
    data = _dataset(tmp_path, shapes, "obj", empty=True)
    with pytest.raises(DataError, match="the 12 label files of the train list hold no boxes"):
        _run(data, tmp_path / "b", "--max-batches", "1")


# ------------------------------------------------------------------ seen and the schedule
def test_seen_past_max_batches_stops_and_suggests_clear(shapes, tmp_path, capsys):
    data = str(shapes / "synthetic.data")
    assert _run(data, tmp_path / "a", "--max-batches", "3") == 0
    w = tmp_path / "a" / "tiny-shapes_final.weights"
    assert read_header(w).seen == 12
    with pytest.raises(TrainingError) as e:
        _run(data, tmp_path / "b", "--max-batches", "2", "--weights", str(w))
    msg = str(e.value)
    assert f"{w} has seen 12 images = iteration 3 at batch 4, not below max_batches=2" in msg
    assert "--clear" in msg
    assert not (tmp_path / "b" / "tiny-shapes_final.weights").exists()
    capsys.readouterr()
    assert cli_main(["train", "--data", data, "--backup", str(tmp_path / "b"), *FAST,
                     "--max-batches", "2", "--weights", str(w)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # continuing below max_batches says where the schedule starts
    assert _run(data, tmp_path / "c", "--max-batches", "4", "--weights", str(w)) == 0
    assert (f"{w}: seen 12 = iteration 3 at 4 images per update; training runs iterations 4..4"
            in capsys.readouterr().out)


def test_burn_in_longer_than_the_run_warns(shapes, tmp_path, capsys):
    data = str(shapes / "synthetic.data")
    assert _run(data, tmp_path / "a", "--max-batches", "2", "--burn-in", "1000") == 0
    err = capsys.readouterr().err
    # the largest rate is the last one: 0.005 * (2/1000)^4 (tiny-shapes: learning_rate=0.005, power 4)
    peak = float(np.float32(0.005 * (2 / 1000) ** 4))
    assert f"burn_in=1000 keeps the rate below {peak:.3g}" in err
    assert "for the whole run of 2 iterations" in err
    assert _run(data, tmp_path / "b", "--max-batches", "2", "--burn-in", "4") == 0
    assert "burn_in" not in capsys.readouterr().err  # 2/4: rate 6 % of learning_rate, no warning


# ------------------------------------------------------------------ resume files
def test_bad_resume_file_is_one_error_naming_it(shapes, tmp_path, capsys):
    data = str(shapes / "synthetic.data")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{junk}: not a training checkpoint"):
        _run(data, tmp_path / "a", "--max-batches", "1", "--resume", str(junk))
    # a checkpoint of another network: classes=4 cfg vs a 2-class cfg
    assert _run(data, tmp_path / "a", "--max-batches", "1") == 0
    pt = tmp_path / "a" / "tiny-shapes_last.pt"
    other = tmp_path / "two.cfg"
    other.write_text(Path(CFG).read_text().replace("classes=4", "classes=2")
                     .replace("filters=27", "filters=21"))
    capsys.readouterr()
    rc = cli_main(["train", "--data", data, "--backup", str(tmp_path / "b"), *FAST, "--cfg", str(other),
                   "--max-batches", "1", "--resume", str(pt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and f"{pt}: its weights do not fit this cfg" in err[0]
    # a damaged trainer state, straight into Trainer.load_state_dict
    state = torch.load(pt, weights_only=True)
    model = Darknet(CFG, width=64, height=64)
    trainer = Trainer(model)
    bad = dict(state["trainer"], updates={"module_list.0.weights": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"update buffer module_list.0.weights has shape \(3,\)"):
        trainer.load_state_dict(bad)
    with pytest.raises(CheckpointError, match="not a Trainer state"):
        trainer.load_state_dict({"seen": 4})
    assert issubclass(CheckpointError, DarknetError) and issubclass(TrainingError, DarknetError)


# ------------------------------------------------------------------ what a run shows
def test_progress_bar_shows_eta(shapes, tmp_path, capsys):
    flags = [f for f in FAST if f != "--no-progress"]
    assert train_cli.main(["--data", str(shapes / "synthetic.data"), "--backup", str(tmp_path),
                           *flags, "--max-batches", "3"]) == 0
    err = capsys.readouterr().err
    bars = re.findall(r"(\d+)/3 \[(\d\d:\d\d)<(\d\d:\d\d|\?)", err)  # tqdm: n/total [elapsed<ETA
    assert bars and bars[-1][0] == "3"


def test_chart_axes_ticks_and_curves(tmp_path):
    assert nice_ticks(700, 10) == [0, 100, 200, 300, 400, 500, 600, 700]
    assert nice_ticks(5.8, 8) == [0, 1, 2, 3, 4, 5, 6]
    assert nice_ticks(0.33, 8) == pytest.approx([0, .05, .1, .15, .2, .25, .3, .35])
    losses = [(i, 6.0 - 5.0 * i / 700) for i in range(1, 701)]
    maps = [(100 * k, 0.1 * k) for k in range(1, 8)]
    img = render_chart(losses, maps, 700)
    lay, x_ticks, loss_ticks = layout_for(losses, 700)
    assert loss_ticks[-1] == 6 and x_ticks[-1] == 700
    blue, red = np.array([200, 0, 0]), np.array([0, 0, 200])

    def near(colour, x, y, r=2):  # a pixel of this colour within r of (x, y)
        patch = img[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).astype(int)
        return bool((np.abs(patch - colour).sum(1) < 120).any())
    assert near(blue, lay.x(350), lay.y_loss(6.0 - 5.0 * 350 / 700))
    assert near(red, lay.x(300), lay.y_map(0.3))
    bottom = lay.top + lay.plot_h
    for v in x_ticks:  # a tick mark and a number under every x tick
        x = lay.x(v)
        assert (img[bottom + 1:bottom + 5, x] < 100).all()
        assert (img[bottom + 8:bottom + 24, x - 12:x + 12] < 128).any()
    for v in loss_ticks:  # and left of every loss tick
        y = lay.y_loss(v)
        assert (img[y - 8:y + 8, lay.left - 40:lay.left - 8] < 128).any()
    # the written file is that picture
    from darknet_py.train.chart import draw_chart
    draw_chart(tmp_path / "chart.png", losses, maps, 700)
    assert np.array_equal(cv2.imread(str(tmp_path / "chart.png")), img)


# ------------------------------------------------------------------ reproducible runs
def test_same_seed_same_weights_other_seed_other_weights(shapes, tmp_path):
    data = str(shapes / "synthetic.data")
    torch.rand(7)  # whatever the global generator held before, the run seeds it
    assert _run(data, tmp_path / "a", "--max-batches", "2") == 0
    torch.manual_seed(12345)
    assert _run(data, tmp_path / "b", "--max-batches", "2") == 0
    assert _run(data, tmp_path / "c", "--max-batches", "2", "--seed", "1") == 0
    final = [(tmp_path / d / "tiny-shapes_final.weights").read_bytes() for d in "abc"]
    assert final[0] == final[1] and final[0] != final[2]


# ------------------------------------------------------------------ sampler
def test_update_sampler_is_whole_updates_of_the_minibatch_stream():
    kw = dict(size=(64, 64), subdivisions=3, seed=4, rank=1)
    minibatches = list(DarknetBatchSampler(50, 2, num_minibatches=12, **kw))
    updates = list(DarknetUpdateSampler(50, 2, num_updates=4, **kw))
    assert updates == [sum(minibatches[3 * u:3 * u + 3], []) for u in range(4)]
    resumed = list(DarknetUpdateSampler(50, 2, start_minibatch=6, num_updates=2, **kw))
    assert resumed == updates[2:]
    with pytest.raises(DataError, match="not a whole number of updates"):
        DarknetUpdateSampler(50, 2, start_minibatch=4, **kw)


def test_subdivisions_through_the_script_match_trainer_step(shapes, tmp_path):
    """--subdivisions 2: the script's passes over a whole-update batch are Trainer.step's."""
    data = str(shapes / "synthetic.data")
    assert _run(data, tmp_path / "a", "--max-batches", "1", "--subdivisions", "2") == 0
    from darknet_py.cfg import parse_cfg
    from darknet_py.data import dataset_from_files, train_loader
    cfg = parse_cfg(CFG)
    cfg.net.options.update(width=64, height=64, batch=4, subdivisions=2, burn_in=0)
    torch.manual_seed(0)
    model = Darknet(cfg)
    trainer = Trainer(model)
    ds = dataset_from_files(data, cfg, "train", seed=0)
    batch = next(iter(train_loader(ds, DarknetUpdateSampler(len(ds), 2, subdivisions=2,
                                                            size=(64, 64), num_updates=1))))
    trainer.step(batch.images, batch.targets)
    again = tmp_path / "again.weights"
    model.save_weights(again)
    assert again.read_bytes() == (tmp_path / "a" / "tiny-shapes_final.weights").read_bytes()


# ------------------------------------------------------------------ the package stands alone
def test_builtin_job_defaults_ship_with_the_package(tmp_path, monkeypatch):
    import darknet_py
    from darknet_py.train.builtin import DATA_DIR, builtin_cfg
    cfg = builtin_cfg()
    assert cfg.is_file() and Path(darknet_py.__file__).parent in cfg.parents
    assert cfg.read_text() == (REPO / "cfg" / "tiny-shapes.cfg").read_text()  # tools/make_cfgs.py writes both
    assert not DATA_DIR.is_absolute()  # generated under the current directory
    source = (Path(darknet_py.__file__).parent / "cli" / "train.py").read_text()
    assert "parents[2]" not in source
    script = REPO / "tools" / "train.py"   # the same file: a link into the package
    assert script.resolve() == (Path(darknet_py.__file__).parent / "cli" / "train.py").resolve()
