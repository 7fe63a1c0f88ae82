"""tools/train.py / ``darknet-py train`` end to end on a tiny synthetic dataset:
checkpoints named and written like darknet's, ``seen`` in their headers,
resume from .weights and from .pt, --clear, Ctrl-C safety, and the written
weights loaded by OpenCV's darknet importer with the same outputs as ours."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from darknet_py.cli import main as cli_main
from darknet_py.cli import train as train_cli
from darknet_py.data import make_synthetic_dataset
from darknet_py.weights import read_header
from tests.conftest import REPO

CFG = str(REPO / "cfg" / "tiny-shapes.cfg")
FAST = ["--cfg", CFG, "--width", "64", "--height", "64", "--batch", "4", "--workers", "0",
        "--no-progress", "--random", "0", "--burn-in", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return str(make_synthetic_dataset(root / "ds", n_train=12, n_valid=4, size=64))


def _run(data, backup, *extra):
    return train_cli.main(["--data", data, "--backup", str(backup), *FAST, *extra])


def test_checkpoints_like_darknet(data, tmp_path):
    assert _run(data, tmp_path, "--max-batches", "3", "--save-every", "2") == 0
    final = tmp_path / "tiny-shapes_final.weights"
    last = tmp_path / "tiny-shapes_last.weights"
    for f in (final, last, tmp_path / "tiny-shapes_last.pt", tmp_path / "chart.png",
              tmp_path / "tiny-shapes_train.log"):
        assert f.is_file(), f
    assert read_header(final).seen == 3 * 4          # seen = iterations x batch
    assert read_header(final).version == (0, 2, 0)   # pjreddie cfg: darknet's header
    assert not list(tmp_path.glob("*.part")), "no temporary files left"
    # the final weights load back into the cfg exactly
    m = Darknet(CFG, width=64, height=64)
    report = m.load_weights(final)
    assert report.layers_loaded == len(m.module_list) and not report.partial


def test_resume_continues_from_seen_and_clear_resets(data, tmp_path):
    assert _run(data, tmp_path, "--max-batches", "2") == 0
    w = tmp_path / "tiny-shapes_final.weights"
    b2 = tmp_path / "b2"
    assert _run(data, b2, "--max-batches", "3", "--weights", str(w)) == 0
    assert read_header(b2 / "tiny-shapes_final.weights").seen == 3 * 4   # one more iteration
    b3 = tmp_path / "b3"
    assert _run(data, b3, "--max-batches", "1", "--weights", str(w), "--clear") == 0
    assert read_header(b3 / "tiny-shapes_final.weights").seen == 4


def test_resume_from_pt_equals_uninterrupted_run(data, tmp_path):
    """2 iterations, then resume from the .pt for a 3rd == 3 iterations straight."""
    torch.manual_seed(0)
    assert _run(data, tmp_path / "a", "--max-batches", "3") == 0
    torch.manual_seed(0)
    assert _run(data, tmp_path / "b", "--max-batches", "2") == 0
    assert _run(data, tmp_path / "c", "--max-batches", "3",
                "--resume", str(tmp_path / "b" / "tiny-shapes_last.pt")) == 0
    straight = (tmp_path / "a" / "tiny-shapes_final.weights").read_bytes()
    resumed = (tmp_path / "c" / "tiny-shapes_final.weights").read_bytes()
    assert straight == resumed


def test_interrupt_writes_last(data, tmp_path, monkeypatch):
    from darknet_py.train import trainer as trainer_mod
    calls = {"n": 0}
    real_update = trainer_mod.Trainer.update

    def update(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_update(self)

    monkeypatch.setattr(trainer_mod.Trainer, "update", update)
    assert _run(data, tmp_path, "--max-batches", "5") == 130
    assert read_header(tmp_path / "tiny-shapes_last.weights").seen == 2 * 4  # seen counts the passes
    assert not (tmp_path / "tiny-shapes_final.weights").exists()


def test_help_and_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--cfg", "--weights", "--clear", "--max-batches", "--backup", "--map",
                 "--device", "--workers"):
        assert flag in out
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--max-batches" in r.stdout


def test_iteration_checkpoint_rule():
    # darknet: pjreddie every 100 below 1000 then every 10000; AlexeyAB every 10000
    assert [i for i in range(1, 1200) if train_cli.iteration_checkpoint(i, "pjreddie")] == \
        list(range(100, 1000, 100))
    assert train_cli.iteration_checkpoint(20000, "pjreddie")
    assert not train_cli.iteration_checkpoint(100, "alexeyab")
    assert train_cli.iteration_checkpoint(10000, "alexeyab")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_identical_weights(data, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with the same weights;
    only rank 0 writes checkpoints and the log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(REPO / "tools" / "train.py"), "--data", data,
           "--backup", str(tmp_path), *FAST, "--max-batches", "2", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    import json
    digests = json.loads((tmp_path / "tiny-shapes_ranks.json").read_text())["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    log = (tmp_path / "tiny-shapes_train.log").read_text()
    assert log.count("starting at iteration") == 1 and "2 process(es)" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["tiny-shapes_final.weights", "tiny-shapes_last.weights", "tiny-shapes_last.pt",
         "tiny-shapes_train.log", "tiny-shapes_ranks.json", "chart.png"])
    assert read_header(tmp_path / "tiny-shapes_final.weights").seen == 2 * 4


def test_written_files_get_the_usual_mode(tmp_path):
    import os
    from darknet_py.files import atomic_write
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.weights", b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "x.weights").stat().st_mode & 0o777 == 0o644


def _losses(log_file) -> list[float]:
    import re
    return [float(m.group(1)) for m in re.finditer(r"^\d+: loss ([0-9.]+),", log_file.read_text(), re.M)]


def test_checkpoints_load_in_opencv_with_our_outputs(data, tmp_path):
    import cv2

    from tests.opencv_util import compare_with_opencv, load_for_opencv
    assert _run(data, tmp_path, "--max-batches", "2", "--save-every", "1") == 0
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    for name in ("tiny-shapes_last.weights", "tiny-shapes_final.weights"):
        w = str(tmp_path / name)
        net = cv2.dnn.readNetFromDarknet(CFG, w)
        model = load_for_opencv(CFG, w, "pjreddie")
        assert compare_with_opencv(model, net, x, 1e-4, name) > 0


def test_finetune_from_official_yolov3_tiny(conformance, manifest, data, tmp_path):
    """darknet's recipe: a partial backbone cut from the official weights, a cfg
    with the new class count; the loss falls and the written weights load back
    byte for byte in darknet_py and give OpenCV's outputs."""
    import cv2

    from tests.opencv_util import compare_with_opencv, load_for_opencv
    real = manifest["real"]
    text = (conformance / real["cfg"]).read_text()
    cfg = tmp_path / "yolov3-tiny-shapes.cfg"
    cfg.write_text(text.replace("classes=80", "classes=4").replace("filters=255", "filters=27"))
    official = Darknet(conformance / real["cfg"])
    official.load_weights(conformance / real["weights"]["file"])
    backbone = tmp_path / "yolov3-tiny.conv.15"
    official.save_weights(backbone, cutoff=15)
    backup = tmp_path / "b"
    from darknet_py.weights import PartialWeightsWarning
    with pytest.warns(PartialWeightsWarning, match="layers 15..23 keep their initial values"):
        rc = train_cli.main(["--data", data, "--cfg", str(cfg), "--weights", str(backbone),
                             "--clear", "--width", "160", "--height", "160", "--batch", "8",
                             "--workers", "0", "--no-progress", "--random", "0", "--burn-in", "0",
                             "--learning-rate", "0.001", "--max-batches", "8", "--log-every", "1",
                             "--backup", str(backup)])
    assert rc == 0
    losses = _losses(backup / "yolov3-tiny-shapes_train.log")
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    final = backup / "yolov3-tiny-shapes_final.weights"
    again = tmp_path / "again.weights"
    m = Darknet(cfg)
    m.load_weights(final)
    m.save_weights(again)
    assert again.read_bytes() == final.read_bytes()
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(final))
    model = load_for_opencv(str(cfg), str(final), "pjreddie")
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(1))
    assert compare_with_opencv(model, net, x, 1e-4, "fine-tuned yolov3-tiny") > 0


def test_train_from_coco_json(data, tmp_path):
    """The same images as a COCO json (boxes in pixels, category ids not 0-based)."""
    import json
    from pathlib import Path

    import cv2

    from darknet_py.data import parse_data_file, read_list
    from darknet_py.data.labels import label_path, read_labels
    cfgdata = parse_data_file(data)
    train_list = cfgdata.resolve(cfgdata.train)
    images, annotations = [], []
    for k, entry in enumerate(read_list(train_list)):
        path = Path(entry) if Path(entry).is_absolute() else train_list.parent / entry
        h, w = cv2.imread(str(path)).shape[:2]
        images.append({"id": k + 1, "file_name": path.name, "width": w, "height": h})
        for cls, cx, cy, bw, bh in read_labels(label_path(str(path), "alexeyab"), 4).tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "iscrowd": 0,
                                "category_id": 10 + int(cls), "area": bw * bh * w * h,
                                "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]})
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 10 + c, "name": f"c{c}"} for c in range(4)]}))
    rc = train_cli.main(["--coco", str(ann), str(path.parent), "--backup", str(tmp_path), *FAST,
                         "--max-batches", "2"])
    assert rc == 0
    assert read_header(tmp_path / "tiny-shapes_final.weights").seen == 2 * 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": images, "annotations": [],
                               "categories": [{"id": 1, "name": "only"}]}))
    from darknet_py.errors import DataError
    with pytest.raises(DataError, match="1 categories but the cfg's detection layer has classes=4"):
        train_cli.main(["--coco", str(bad), str(path.parent), "--backup", str(tmp_path), *FAST,
                        "--max-batches", "1"])
