#!/usr/bin/env python3
"""Write tests/golden_data: the part of ../shared/conformance that ships in git.

A fresh clone has no ``../shared`` beside it.  So that its tests still check
darknet_py against darknet's own numbers, this script copies a small, chosen
part of the conformance data (at most ``BUDGET_BYTES``) into ``tests/golden_data``
with a reduced ``manifest.json`` of the same schema: the test modules then
parametrise over the cases that are there.  Nothing is re-encoded: every file
is a byte copy, except the two photo ``.npz`` files, whose kept members are
copied as their stored (compressed) bytes into a smaller zip (see PHOTOS).

What is taken, and why (CASES ... PHOTOS below say it per entry):

* forward cases ``pj_yolov3-tiny_narrow8`` (pjreddie: conv, maxpool 2/2 and 2/1,
  route, upsample, two [yolo], training-mode forward, detections) and
  ``ab_yolov4-tiny_narrow8`` (AlexeyAB: route groups, scale_x_y, overlapping
  masks, CIoU deltas, training-mode forward), plus ``pj_alexnet_narrow16``
  (connected, dropout, softmax; the cfg the transposed weights files need);
* the training trajectory ``train_pj_yolov3-tiny_narrow8`` (3 SGD updates with
  BN, burn-in, momentum; the only one with the pre-update buffers of updates 2-3);
* all of ``weights_format/`` (32/64-bit seen, transposed connected, partial);
* the three ``decode_*`` cases (yolo and region decoding + NMS; 230 kB), with
  the cfgs they read (for the region one, that of ``pj_yolov2-tiny_narrow8``,
  whose own weights and arrays are left out);
* ``zoo/``: both darknets' ``cfg/`` folders, unchanged, 0.84 MB (parse, build, shape
  and ONNX tests read them; they are conformance data, not our cfg/);
* the official yolov3-tiny photo case WITHOUT its weights: the 35 MB
  ``yolov3-tiny.weights`` alone exceeds the budget and cannot be shrunk
  losslessly.  Shipped: the cfg, coco.names and two photos (chelsea.png,
  rocket.jpg) with darknet's decoded image and letterboxed network input, so
  decoding and letterboxing are still checked against darknet.  The network
  outputs and detections of the photos (``out_016``, ``out_023``, ``dets_*``)
  are left out of their npz: without the weights nothing can be compared with
  them.  Every test that needs the weights skips, naming the missing file.

Everything else is left out and listed in the manifest's ``subset`` section:
``omitted`` (manifest entries: a test looking one up skips with "needs
../shared/conformance: case X is not in the shipped subset") and
``omitted_files`` (a path a test builds to such a file skips the same way);
tests/conftest.py reads both.  The output is byte-reproducible from the same
source; tests/test_golden_subset.py checks that the shipped files are what this
script makes from ../shared/conformance, whenever ../shared is present.

    python tools/make_golden_subset.py                    # ../shared/conformance -> tests/golden_data
    python tools/make_golden_subset.py --source DIR --out DIR
    python tools/make_golden_subset.py --list             # what is taken and why, nothing written
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "conformance"
DEFAULT_OUT = ROOT / "tests" / "golden_data"
BUDGET_BYTES = 20_000_000

#: forward cases (manifest ``cases``): name -> why it is in the subset
CASES = {
    "pj_yolov3-tiny_narrow8": "the pjreddie forward case: conv, maxpool 2/2 and 2/1, route, upsample, "
                              "two [yolo] heads with deltas and detections, training-mode forward; "
                              "its cfg/weights also serve weights_format/, the train and decode cases",
    "ab_yolov4-tiny_narrow8": "the AlexeyAB forward case: route groups, scale_x_y, overlapping masks, "
                              "CIoU deltas, training-mode forward; cfg of its decode case",
    "pj_alexnet_narrow16": "connected, dropout and softmax layers; the cfg/weights that the transposed "
                           "weights_format files are compared with (0.9 MB)",
}
#: decode cases (manifest ``decode_cases``): all three, 230 kB together
DECODE_CASES = {
    "decode_pj_yolov3-tiny_narrow8": "pjreddie [yolo] decoding + NMS from given head outputs",
    "decode_ab_yolov4-tiny_narrow8": "AlexeyAB [yolo] decoding, greedynms and its cfg NMS",
    "decode_pj_yolov2-tiny_narrow8": "[region] decoding + NMS (ships the cfg of pj_yolov2-tiny_narrow8, "
                                     "not that case's weights and arrays)",
}
#: training trajectories (manifest ``train_cases.cases``)
TRAIN_CASES = {
    "train_pj_yolov3-tiny_narrow8": "darknet's SGD step with BN, burn-in, momentum and decay; the only "
                                    "trajectory with grad2/grad3 (the pre-update buffers of updates 2-3)",
}
#: folders copied whole
FOLDERS = {
    "weights_format": "header variants (32/64-bit seen), transposed [connected], darknet partial",
    "zoo": "both darknets' cfg/ folders, unchanged (parse, build, BFLOPs, size checks)",
}
#: the official yolov3-tiny photo case: files shipped as they are
REAL_FILES = ("cfg", "names")
#: photos shipped (manifest ``real.images`` keys) and why
PHOTOS = {
    "chelsea": "a PNG: decoded exactly as stb_image does, letterbox equals darknet's",
    "rocket": "a JPEG: decoder gap to stb_image, letterbox equals darknet's",
}
#: members of a photo npz that are kept; the rest (yolo outputs, detections) need the weights
PHOTO_ARRAYS = ("image_uint8_hwc", "letterbox")
WEIGHTS_REASON = ("the official yolov3-tiny.weights (35 MB) does not fit the subset's 20 MB; "
                  "network outputs and detections of the photos need ../shared/conformance")


class SubsetError(RuntimeError):
    """The source does not hold what the subset takes, or the result is over budget."""


# ------------------------------------------------------------------ zip with copied members
def copy_zip_members(src: Path, dst: Path, keep: tuple[str, ...]) -> None:
    """Write ``dst``: a zip holding the members ``keep`` of ``src`` as ``src`` stores them.

    The compressed bytes, CRC and timestamps are copied, not recomputed, so the
    arrays are bit-identical and the file does not depend on the zlib build.
    """
    with zipfile.ZipFile(src) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    missing = [k for k in keep if k not in infos]
    if missing:
        raise SubsetError(f"{src}: no member {', '.join(missing)}")
    out, central = bytearray(), bytearray()
    with open(src, "rb") as fh:
        for name in keep:
            info = infos[name]
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                raise SubsetError(f"{src}: member {name}: no local header at {info.header_offset}")
            name_len, extra_len = struct.unpack("<2H", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            data = fh.read(info.compress_size)
            raw_name = name.encode()
            dos_time = (info.date_time[3] << 11) | (info.date_time[4] << 5) | (info.date_time[5] // 2)
            dos_date = ((info.date_time[0] - 1980) << 9) | (info.date_time[1] << 5) | info.date_time[2]
            fields = (20, 0, info.compress_type, dos_time, dos_date, info.CRC, info.compress_size,
                      info.file_size, len(raw_name))
            central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, len(out))
            central += raw_name
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + raw_name + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(keep), len(keep), len(central), len(out), 0)
    dst.write_bytes(bytes(out + central + end))
    with zipfile.ZipFile(dst) as zf:       # CRC of every member against its bytes
        bad = zf.testzip()
    if bad is not None:
        raise SubsetError(f"{dst}: member {bad} does not match its CRC")


# ------------------------------------------------------------------ what is taken
def _pick(section: dict, names: dict, where: str) -> dict:
    missing = [n for n in names if n not in section]
    if missing:
        raise SubsetError(f"the source manifest has no {where} {', '.join(missing)}")
    return {n: section[n] for n in section if n in names}


def _case_files(entry: dict) -> list[str]:
    return [entry[k] for k in ("cfg", "weights", "initial_weights", "arrays") if k in entry]


def plan(source: Path, manifest: dict) -> tuple[dict, dict[str, str], dict[str, tuple[str, ...]]]:
    """(subset manifest, files copied as they are -> why, photo npz -> kept members)."""
    sub = copy.deepcopy(manifest)
    sub["cases"] = _pick(manifest["cases"], CASES, "case")
    sub["decode_cases"] = _pick(manifest["decode_cases"], DECODE_CASES, "decode case")
    sub["train_cases"]["cases"] = _pick(manifest["train_cases"]["cases"], TRAIN_CASES, "train case")
    real = manifest["real"]
    sub["real"]["images"] = [im for im in real["images"] if im["key"] in PHOTOS]
    if len(sub["real"]["images"]) != len(PHOTOS):
        raise SubsetError(f"the source manifest lacks a photo of {', '.join(PHOTOS)}")

    files: dict[str, str] = {}          # the first reason to take a file is the one given
    for group, why in (("cases", CASES), ("decode_cases", DECODE_CASES)):
        for name, entry in sub[group].items():
            for f in _case_files(entry):
                files.setdefault(f, f"{group}/{name}: {why[name]}")
    for name, entry in sub["train_cases"]["cases"].items():
        for f in _case_files(entry):
            files.setdefault(f, f"train_cases/{name}: {TRAIN_CASES[name]}")
    for folder, why in FOLDERS.items():
        for p in sorted((source / folder).rglob("*")):
            if p.is_file():
                files.setdefault(p.relative_to(source).as_posix(), why)
    for k in REAL_FILES:
        files.setdefault(real[k], f"real/{k} of the official yolov3-tiny case")
    photos: dict[str, tuple[str, ...]] = {}
    for im in sub["real"]["images"]:
        photo = f"{Path(real['cfg']).parent.as_posix()}/{im['file']}"
        files.setdefault(photo, f"photo {im['key']}: {PHOTOS[im['key']]}")
        photos[im["arrays"]] = tuple(f"{k}.npy" for k in PHOTO_ARRAYS)
    for rel in files:
        if not (source / rel).is_file():
            raise SubsetError(f"{source / rel}: not found (the subset takes it)")

    shipped = set(files) | set(photos)
    omitted_files = {}
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source).as_posix()
        if p.is_file() and rel not in shipped and rel not in ("manifest.json", "README.md"):
            omitted_files[rel] = (f"{rel}: {WEIGHTS_REASON}" if rel == real["weights"]["file"]
                                  else f"{rel} is not in the shipped subset")
    kept_folders = {rel.split("/")[0] for rel in shipped}
    omitted_folders = sorted({rel.split("/")[0] for rel in omitted_files if "/" in rel} - kept_folders)
    omitted = {f"{group}/{name}": f"{label} {name} is not in the shipped subset"
               for group, label, full, kept in (
                   ("cases", "case", manifest["cases"], sub["cases"]),
                   ("decode_cases", "decode case", manifest["decode_cases"], sub["decode_cases"]),
                   ("train_cases/cases", "train case", manifest["train_cases"]["cases"],
                    sub["train_cases"]["cases"]))
               for name in full if name not in kept}
    sub["subset"] = {
        "description": "a part of ../shared/conformance shipped with the repository, written by "
                       "tools/make_golden_subset.py; the full data runs every test",
        "budget_bytes": BUDGET_BYTES,
        "taken": {**{f"cases/{n}": w for n, w in CASES.items()},
                  **{f"decode_cases/{n}": w for n, w in DECODE_CASES.items()},
                  **{f"train_cases/cases/{n}": w for n, w in TRAIN_CASES.items()},
                  **{f"{f}/": w for f, w in FOLDERS.items()},
                  **{f"real/images/{k}": w for k, w in PHOTOS.items()}},
        "reduced_arrays": {f: {"kept": [k[:-4] for k in keep],
                               "why": "the other members (yolo outputs, detections) need the weights"}
                           for f, keep in photos.items()},
        "omitted": omitted,
        "omitted_files": omitted_files,
        "omitted_folders": {f: f"{f}/ is not in the shipped subset" for f in omitted_folders},
    }
    return sub, files, photos


def _is_subset(folder: Path) -> bool:
    """Only a folder this script wrote is ever replaced (never the full data)."""
    try:
        with open(folder / "manifest.json") as fh:
            return "subset" in json.load(fh)
    except (OSError, ValueError):
        return False


def list_subset(source: Path) -> None:
    """Print every file the subset takes, its size and why."""
    with open(source / "manifest.json") as fh:
        _, files, photos = plan(source, json.load(fh))
    for rel, why in sorted(files.items()):
        print(f"{(source / rel).stat().st_size:>10}  {rel}  -- {why}")
    for rel, keep in sorted(photos.items()):
        print(f"{'':>10}  {rel}  -- only {', '.join(k[:-4] for k in keep)} (the rest needs the weights)")


def write_subset(source: Path, out: Path) -> int:
    """Write the subset of ``source`` to ``out`` (replaced); returns its size in bytes."""
    with open(source / "manifest.json") as fh:
        manifest = json.load(fh)
    sub, files, photos = plan(source, manifest)
    if out.exists() and not _is_subset(out):
        raise SubsetError(f"{out} exists and is not a golden subset; not replacing it")
    tmp = out.with_name(out.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    for rel in sorted(files):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, tmp / rel)
    for rel, keep in sorted(photos.items()):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        copy_zip_members(source / rel, tmp / rel, keep)
    (tmp / "manifest.json").write_text(json.dumps(sub, indent=1, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    if size > BUDGET_BYTES:
        shutil.rmtree(tmp)
        raise SubsetError(f"the subset is {size} bytes, over the budget of {BUDGET_BYTES}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the full conformance folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the subset is written (replaced)")
    ap.add_argument("--list", action="store_true", help="print what is taken and why; write nothing")
    args = ap.parse_args(argv)
    try:
        if args.list:
            list_subset(args.source)
            return 0
        size = write_subset(args.source, args.out)
    except (SubsetError, OSError, KeyError) as exc:
        print(f"make_golden_subset: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {size} bytes ({size / 1e6:.2f} MB of {BUDGET_BYTES / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
