"""nnU-Net v2 on medadapt's k-shot split: the field's self-configuring baseline, scored like medadapt's runs.

For one dataset, k and seed this takes the training cases of medadapt's own split
(``medadapt.data.fewshot.make_split``, the same cases ``bench_fewshot.py`` and ``bench_default_fit.py``
train on) and writes ONLY those into nnU-Net's raw format (``DatasetNNN_<name>/imagesTr``, ``labelsTr``,
``dataset.json``). The split's fixed test volumes never enter nnU-Net's raw, preprocessed or results
folders: they are copied to a separate prediction input folder. It then runs nnU-Net's own commands

    nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres --verify_dataset_integrity
    nnUNetv2_train ID 3d_fullres all -tr TRAINER -device cpu
    nnUNetv2_predict -i TEST_IMAGES -o OUT -d ID -c 3d_fullres -f all -tr TRAINER -device cpu

(``--device cuda`` passes ``-device cuda``) and scores the predictions against the test labels with
medadapt's evaluation (the function behind ``medadapt evaluate --pred DIR --gt DIR``), aggregated as
``bench_fewshot.py`` aggregates its runs (mean over cases and classes of DSC, NSD at 2 mm and HD95).
Results merge into
``bench/results/nnunet_<name>.json`` under ``nnunet:TRAINER/k<k>/s<seed>``, with the trainer's epoch budget,
the wall time of every stage, the thread count and provenance (``bench/provenance.py``). Only a finished
run (final checkpoint, every test volume predicted and scored) is written; every stage whose outputs
exist is skipped, so a killed run continues where it stopped (training resumes from nnU-Net's latest
checkpoint with ``--c``).

nnU-Net is an optional benchmark dependency, never one of medadapt's: it pulls torchvision and timm. It
lives in its own virtual environment, and this script (run with medadapt's environment) calls its entry
points through ``--nnunet-bin``:

    python3.11 -m venv /work/nnunet-venv
    /work/nnunet-venv/bin/pip install -c constraints.txt torch==2.13.0 nnunetv2

    nice -n 15 .venv/bin/python bench/bench_nnunet.py --data ../shared/data/hippocampus --name hippocampus \\
        --shots 5 --seed 0 --trainer nnUNetTrainer_5epochs --threads 1 --nnunet-bin /work/nnunet-venv/bin

The shorter-schedule trainers nnU-Net ships (``nnUNetTrainer_1epoch``, ``_5epochs``, ``_10epochs``,
``_20epochs``, ``_50epochs``, ``_100epochs``, ...; the standard ``nnUNetTrainer`` trains 1000 epochs of 250
iterations) set the budget. On hippocampus at k = 5 nnU-Net plans batch 2 of 40×56×40 patches, and one
epoch (250 training + 50 validation iterations) costs about 11 minutes of one CPU core (measured with
``--threads 1``); the default, ``nnUNetTrainer_5epochs``, is the largest shipped schedule within one hour of
one free core. A core shared with other work stretches the wall time accordingly.
The entry points run through a short shim (``_SHIM``) for a CPU-only torch: nnU-Net's ``-device cpu`` path
sets torch's thread count to the machine's CPU count, so the shim reports ``--threads`` CPUs; and PyPI's
torchvision (pulled by timm, which only nnU-Net's Primus trainers import) is built for the CUDA torch and
fails to import with the CPU one, so the shim lets nnU-Net's trainer lookup pass over the Primus module.
nnU-Net's U-Net trainers use neither timm nor torchvision. Data augmentation runs in the training process
(``nnUNet_n_proc_DA=0``) unless ``--da-workers`` says otherwise.

Scope: single-channel volumes (NIfTI, as in MSD / nnU-Net layouts) with ``3d_fullres`` (or ``2d``), and
2D image folders (8-bit grey or RGB, e.g. DRIVE) with ``--config 2d``, exported as PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import provenance  # noqa: E402

DEFAULT_TRAINER = "nnUNetTrainer_5epochs"
DEFAULT_ID = 501
STANDARD_EPOCHS = 1000
ENTRY_POINTS = {
    "plan": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "train": "nnunetv2.run.run_training:run_training_entry",
    "predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
COMMAND_NAMES = {"plan": "nnUNetv2_plan_and_preprocess", "train": "nnUNetv2_train", "predict": "nnUNetv2_predict"}
PRIMUS_TRAINERS = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"
# Runs an nnU-Net entry point with two adjustments, both for a CPU-only torch:
# 1. nnU-Net's CPU path calls torch.set_num_threads(multiprocessing.cpu_count()): the CPU count is --threads.
# 2. nnU-Net finds a trainer class by importing every trainer module; the Primus trainers import timm, which
#    imports torchvision, and PyPI's torchvision is built for the CUDA torch (with the CPU torch it fails:
#    "operator torchvision::nms does not exist"; without it timm fails). When that import fails, the Primus
#    trainer module is registered as an empty module so the lookup passes over it; the U-Net trainers used
#    here never touch timm or torchvision.
_SHIM = f"""
import importlib, multiprocessing, os, sys, types
n = int(sys.argv[1])
multiprocessing.cpu_count = os.cpu_count = lambda: n
try:
    import dynamic_network_architectures.architectures.primus
except (ImportError, RuntimeError) as exc:
    stub = types.ModuleType("{PRIMUS_TRAINERS}")
    stub.__doc__ = f"unavailable here: {{exc}}"
    sys.modules["{PRIMUS_TRAINERS}"] = stub
mod, fn = sys.argv[2].split(":")
sys.argv = [sys.argv[2], *sys.argv[3:]]
getattr(importlib.import_module(mod), fn)()
"""


class BenchError(Exception):
    """A problem with the input or the environment, reported in one line (exit code 2)."""


# ----------------------------------------------------------------------------- raw format

def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    raise BenchError(f"{path}: nnU-Net raw export handles NIfTI volumes (.nii.gz / .nii) only; convert the dataset first.")


def _write_label(src: Path, dst: Path) -> None:
    """The label as integers (some datasets store labels as float32), same affine and header geometry."""
    import nibabel as nib

    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)
    values = np.rint(data)
    if not np.allclose(values, data) or values.min() < 0 or values.max() > 255:
        raise BenchError(f"{src}: labels must be integers 0..255.")
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    out = nib.Nifti1Image(values.astype(np.uint8), img.affine, header)
    out.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
    out.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
    tmp = dst.with_name(f".{dst.name}.tmp{_nifti_suffix(dst)}")
    nib.save(out, str(tmp))
    os.replace(tmp, dst)


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _check_volume(path: Path) -> None:
    import nibabel as nib

    shape = nib.load(str(path)).shape
    if len(shape) != 3:
        raise BenchError(f"{path}: a single-channel 3D volume is expected, got shape {shape}.")


PNG = ".png"


def _write_png(arr: np.ndarray, dst: Path) -> None:
    from PIL import Image

    tmp = dst.with_name(f".{dst.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, dst)


def _image_2d(src: Path) -> np.ndarray:
    """A 2D image as nnU-Net's NaturalImage2DIO reads it: 8-bit grey or RGB pixels."""
    from medadapt.io.images import read_image_2d

    arr = read_image_2d(src)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BenchError(f"{src}: nnU-Net's 2D export here takes 8-bit grey or RGB images, got "
                         f"{arr.dtype} {arr.shape}.")
    return arr


def _label_2d(src: Path) -> np.ndarray:
    """A 2D mask as class indices (0/255 viewing masks become 0/1, as medadapt reads them)."""
    from medadapt.io.images import read_label_2d

    return read_label_2d(src)


def _raw_ending(dataset, path: Path) -> str:
    """The file ending a case has in nnU-Net's raw folders: NIfTI as given, 2D images as PNG."""
    return _nifti_suffix(path) if dataset.is_3d else PNG


def write_raw_dataset(dataset, train_keys, raw_root: Path, dataset_id: int, name: str) -> Path:
    """nnU-Net raw folder ``DatasetNNN_<name>`` holding ONLY ``train_keys``; returns it.

    Volumes are copied byte for byte as ``<key>_0000<ext>``; labels are rewritten as uint8 with the same
    affine (nnU-Net's integrity check compares image and label geometry). 2D images (nnU-Net ``2d``)
    become PNG files read by nnU-Net's NaturalImage2DIO: RGB as one file of three channels (R, G, B, as
    nnU-Net's natural-image datasets), masks as class indices. Written in a temporary folder and
    renamed, so a half-written dataset never exists.
    """
    if not 1 <= dataset_id <= 999:
        raise BenchError(f"dataset id {dataset_id}: nnU-Net ids are 1..999.")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise BenchError(f"dataset name {name!r}: use letters, digits and underscores only.")
    if not train_keys:
        raise BenchError("no training cases.")
    refs = [dataset.case(k) for k in train_keys]
    if any(r.label is None for r in refs):
        raise BenchError(f"{dataset.root}: cases without label files cannot be exported to nnU-Net's raw format.")
    endings = {_raw_ending(dataset, r.image) for r in refs} | {_raw_ending(dataset, r.label) for r in refs}
    if len(endings) != 1:
        raise BenchError(f"{dataset.root}: images and labels must share one file ending, found {sorted(endings)}.")
    ending = endings.pop()
    channels = {"0": _channel_name(dataset)}
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    tmp = raw_root / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    for ref in refs:
        if dataset.is_3d:
            _check_volume(ref.image)
            _copy(ref.image, tmp / "imagesTr" / f"{ref.key}_0000{ending}")
            _write_label(ref.label, tmp / "labelsTr" / f"{ref.key}{ending}")
            continue
        image = _image_2d(ref.image)
        if image.ndim == 3:
            channels = {"0": "R", "1": "G", "2": "B"}
        _write_png(image, tmp / "imagesTr" / f"{ref.key}_0000{ending}")
        _write_png(_label_2d(ref.label), tmp / "labelsTr" / f"{ref.key}{ending}")
    classes = dict(sorted(dataset.classes.items()))
    meta = {
        "name": name,
        "description": f"{len(refs)} training case(s) of {dataset.name}: {', '.join(r.key for r in refs)}",
        "channel_names": channels,
        "labels": {"background": 0, **{classes[c]: int(c) for c in classes}},
        "numTraining": len(refs),
        "file_ending": ending,
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _channel_name(dataset) -> str:
    """The source dataset.json's modality name (nnU-Net normalises "CT" differently from everything else)."""
    meta = Path(dataset.root) / "dataset.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        names = info.get("channel_names") or info.get("modality") or {}
        if names.get("0"):
            return str(names["0"])
    return "CT" if dataset.modality.lower() == "ct" else "MRI"


def write_test_inputs(dataset, test_keys, image_dir: Path, label_dir: Path) -> None:
    """Test images as nnU-Net prediction input (``<key>_0000``) and their labels as integers, apart from
    every nnU-Net dataset folder."""
    for d in (image_dir, label_dir):
        d.mkdir(parents=True, exist_ok=True)
    for key in test_keys:
        ref = dataset.case(key)
        image_file = image_dir / f"{key}_0000{_raw_ending(dataset, ref.image)}"
        label_file = label_dir / f"{key}{_raw_ending(dataset, ref.label)}"
        if dataset.is_3d:
            if not image_file.exists():
                _copy(ref.image, image_file)
            if not label_file.exists():
                _write_label(ref.label, label_file)
            continue
        if not image_file.exists():
            _write_png(_image_2d(ref.image), image_file)
        if not label_file.exists():
            _write_png(_label_2d(ref.label), label_file)


# ----------------------------------------------------------------------------- nnU-Net stages

def _linked_folder(folder: Path, files: list[Path]) -> Path:
    """``folder`` holding hard links to ``files`` (made once, complete or not at all)."""
    if not folder.is_dir():
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for src in files:
            os.link(src, tmp / src.name)
        os.replace(tmp, folder)
    return folder


def epochs_of(trainer: str) -> int | None:
    """The epoch budget a trainer's name states (nnU-Net's naming), None when it does not say."""
    if trainer == "nnUNetTrainer":
        return STANDARD_EPOCHS
    m = re.fullmatch(r"nnUNetTrainer_(\d+)epochs?", trainer)
    return int(m.group(1)) if m else None


def run_stage(stage: str, args: list[str], env: dict, log: Path, nnunet_bin: Path, threads: int) -> float:
    """One nnU-Net entry point as a subprocess; its output goes to ``log``. Returns wall seconds."""
    python = nnunet_bin / "python"
    cmd = [str(python), "-c", _SHIM, str(threads), ENTRY_POINTS[stage], *args]
    print(f"[{time.strftime('%H:%M:%S')}] {COMMAND_NAMES[stage]} {' '.join(args)}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise BenchError(f"{COMMAND_NAMES[stage]} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return wall


def score_predictions(pred_dir: Path, gt_dir: Path, classes: list[int], tolerance_mm: float = 2.0) -> dict:
    """medadapt's folder evaluation, aggregated as bench_fewshot.score aggregates its runs."""
    from medadapt.evaluate.folders import evaluate_folders

    start = time.perf_counter()
    rows = evaluate_folders(pred_dir, gt_dir, classes=classes, tolerance_mm=tolerance_mm)
    return {**aggregate_rows(rows, classes), "eval_seconds": time.perf_counter() - start}


def aggregate_rows(rows: list[dict], classes: list[int]) -> dict:
    """Per-(case, class) rows -> mean DSC / NSD / HD95 over finite values, overall and per class
    (``bench_best.py`` aggregates its runs with this too)."""
    out: dict = {}
    for m in ("dsc", "nsd", "hd95"):
        vals = np.array([r[m] for r in rows], dtype=float)
        out[m] = float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else float("nan")
    for m in ("dsc", "nsd", "hd95"):
        per = {}
        for c in classes:
            vals = np.array([r[m] for r in rows if r["class"] == c], dtype=float)
            per[str(c)] = float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else float("nan")
        out[f"{m}_per_class"] = per
    out["hd95_infinite"] = int(sum(1 for r in rows if not np.isfinite(r["hd95"])))
    out["scored_cases"] = len({r["case"] for r in rows})
    return out


def _fold_dir(results: Path, dataset_folder: str, trainer: str, config: str) -> Path:
    return results / dataset_folder / f"{trainer}__nnUNetPlans__{config}" / "fold_all"


def _versions(nnunet_bin: Path) -> dict:
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({p: v(p) for p in ('nnunetv2', 'torch', 'dynamic_network_architectures')}))")
    try:
        out = subprocess.run([str(nnunet_bin / "python"), "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {}


# ----------------------------------------------------------------------------- results

def write_json(path: Path, data: dict) -> None:
    """Atomic: a killed benchmark never leaves a half-written result file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_key(trainer: str, shots: int, seed: int, config: str = "3d_fullres") -> str:
    return f"nnunet:{trainer}{'' if config == '3d_fullres' else '+' + config}/k{shots}/s{seed}"


def print_table(data: dict) -> None:
    """Markdown table of the runs of one nnunet_<name>.json."""
    runs = data.get("runs", {})
    classes = sorted({c for r in runs.values() for c in r.get("dsc_per_class", {})}, key=int)
    names = data.get("class_names") or {}
    head = (["run", "epochs × iterations", "DSC"] + [f"DSC {names.get(c, c)}" for c in classes]
            + ["NSD 2 mm", "HD95 mm", "train s", "preprocess s", "predict s", "threads", "test volumes"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in sorted(runs, key=lambda k: (runs[k].get("epochs") or 0, k)):
        r = runs[key]
        s = r["stage_seconds"]
        iters = r.get("iterations_per_epoch")
        budget = f"{r.get('epochs') or 'not recorded'} × {iters if iters else 'not recorded'}"
        cells = [f"`{key}`", budget, f"{r['dsc']:.3f}", *(f"{r['dsc_per_class'].get(c, float('nan')):.3f}" for c in classes),
                 f"{r['nsd']:.3f}", f"{r['hd95']:.2f}", *(_seconds(s.get(k)) for k in ("train", "plan_and_preprocess", "predict")),
                 str(r.get("threads")), str(r.get("scored_cases"))]
        print("| " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hippocampus"))
    ap.add_argument("--name", default=None, help="results name (default: the data folder's name)")
    for flag in ("--label-dir", "--image-suffix", "--label-suffix"):  # as medadapt fit's dataset options
        ap.add_argument(flag, default=None)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trainer", default=DEFAULT_TRAINER, help="an nnU-Net trainer class, e.g. nnUNetTrainer_5epochs")
    ap.add_argument("--config", default="3d_fullres", help="nnU-Net configuration (3d_fullres, 2d, ...)")
    ap.add_argument("--dataset-id", type=int, default=DEFAULT_ID)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="nnU-Net's -device (on cuda the standard schedule is practical; raise --da-workers)")
    ap.add_argument("--da-workers", type=int, default=0, help="nnUNet_n_proc_DA (0: augmentation in the training process)")
    ap.add_argument("--nnunet-bin", type=Path, default=Path("/work/nnunet-venv/bin"),
                    help="bin folder of the environment nnunetv2 is installed in")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "tmp" / "nnunet",
                    help="nnU-Net's raw / preprocessed / results folders and the predictions go here")
    ap.add_argument("--test-cases", type=int, default=None, help="smoke runs only: predict the first N test volumes")
    ap.add_argument("--out-json", type=Path, default=None, help="default bench/results/nnunet_<name>.json")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args) -> int:
    name = args.name or Path(args.data).name
    out_json = args.out_json or ROOT / "bench" / "results" / f"nnunet_{name}.json"
    if args.table_only:
        print_table(json.loads(out_json.read_text()))
        return 0
    python = args.nnunet_bin / "python"
    if not python.is_file():
        raise BenchError(f"{python} does not exist: install nnunetv2 in its own environment (see this script's "
                         "docstring) and pass its bin folder with --nnunet-bin.")
    from medadapt.data.datasets import load_segmentation_dataset
    from medadapt.data.fewshot import make_split

    dataset = load_segmentation_dataset(args.data, label_dir=args.label_dir, image_suffix=args.image_suffix,
                                        label_suffix=args.label_suffix)
    if not dataset.is_3d and args.config.startswith("3d"):
        raise BenchError(f"{args.data}: 2D images; use --config 2d.")
    split = make_split(dataset, shots=args.shots, seed=args.seed)
    train, test_all = list(split.train), list(split.test)
    test = test_all[: args.test_cases] if args.test_cases else test_all
    smoke = bool(args.test_cases)
    classes = sorted(dataset.classes)

    tag = f"{name}_k{args.shots}_s{args.seed}"
    work = (args.work / tag).resolve()
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    ds_name = re.sub(r"[^A-Za-z0-9_]", "_", tag)
    ds_folder = f"Dataset{args.dataset_id:03d}_{ds_name}"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads), "nnUNet_n_proc_DA": str(args.da_workers),
           "nnUNet_compile": "f", "PYTHONPATH": ""}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    state_path = work / f"stages_{args.trainer}_{args.config}.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    resumed = bool(state.get("stage_seconds"))
    # the record of the invocation that began this run: a resumed run keeps its start time and load
    prov = state.setdefault("provenance_start", provenance.start())
    prov["resumed"] = prov.get("resumed") or resumed
    stage_seconds = state.setdefault("stage_seconds", {})
    skipped = []

    # raw export and preprocessing are shared by every trainer of this dataset, k and seed
    shared_path = work / f"stages_shared_{args.config}.json"
    shared = json.loads(shared_path.read_text()) if shared_path.is_file() else {
        k: stage_seconds[k] for k in ("raw", "plan_and_preprocess") if k in stage_seconds}  # older state files

    def save_state():
        write_json(state_path, state)

    # 1. raw dataset: the k training cases only
    marker = raw / ds_folder / "dataset.json"
    if marker.is_file() and json.loads(marker.read_text()).get("numTraining") == len(train) and \
            sorted(p.name for p in (raw / ds_folder / "labelsTr").iterdir()) == sorted(
                f"{k}{_raw_ending(dataset, dataset.case(k).label)}" for k in train):
        skipped.append("raw")
    else:
        t = time.perf_counter()
        write_raw_dataset(dataset, train, raw, args.dataset_id, ds_name)
        shared["raw"] = time.perf_counter() - t
        write_json(shared_path, shared)
    # 2. plan + preprocess
    plans = pre / ds_folder / "nnUNetPlans.json"
    if plans.is_file() and (pre / ds_folder / f".done_{args.config}").is_file():
        skipped.append("plan_and_preprocess")
    else:
        shared["plan_and_preprocess"] = run_stage(
            "plan", ["-d", str(args.dataset_id), "-c", args.config, "--verify_dataset_integrity",
                     "-np", str(args.threads), "-npfp", str(args.threads)],
            {**env, "nnUNet_n_proc_DA": str(args.threads)},  # the planner sets torch's threads from it
            logs / "plan.log",
            args.nnunet_bin, args.threads)
        (pre / ds_folder / f".done_{args.config}").write_text("done\n")
        write_json(shared_path, shared)
    # 3. train on fold "all" (every training case; nnU-Net keeps no validation split then)
    fold = _fold_dir(res, ds_folder, args.trainer, args.config)
    if (fold / "checkpoint_final.pth").is_file():
        skipped.append("train")
    else:
        cont = ["--c"] if (fold / "checkpoint_latest.pth").is_file() else []
        wall = run_stage("train", [str(args.dataset_id), args.config, "all", "-tr", args.trainer, "-device", args.device,
                                   *cont], env, logs / f"train_{args.trainer}_{args.config}.log",
                         args.nnunet_bin, args.threads)
        stage_seconds["train"] = stage_seconds.get("train", 0.0) + wall  # a resumed training adds up
        save_state()
    # 4. predict the held-out volumes (a folder outside nnU-Net's dataset folders)
    test_images, test_labels = work / "test_images", work / "test_labels"
    write_test_inputs(dataset, test_all, test_images, test_labels)
    pred_in = _linked_folder(work / f"predict_in_{len(test)}", [next(test_images.glob(f"{k}_0000.*")) for k in test])
    gt = _linked_folder(work / f"gt_{len(test)}", [next(test_labels.glob(f"{k}.*")) for k in test])
    pred = work / f"pred_{args.trainer}_{args.config}_{len(test)}"
    done = pred / ".done"
    if done.is_file() and done.read_text().strip() == str((fold / "checkpoint_final.pth").stat().st_mtime_ns):
        skipped.append("predict")
    else:
        stage_seconds["predict"] = run_stage(
            "predict", ["-i", str(pred_in), "-o", str(pred), "-d", str(args.dataset_id), "-c", args.config,
                        "-f", "all", "-tr", args.trainer, "-device", args.device, "-npp", "1", "-nps", "1"],
            env, logs / f"predict_{args.trainer}_{args.config}.log", args.nnunet_bin, args.threads)
        done.write_text(str((fold / "checkpoint_final.pth").stat().st_mtime_ns) + "\n")
        save_state()
    missing = [k for k in test if not any(pred.glob(f"{k}.nii*")) and not (pred / f"{k}{PNG}").is_file()]
    if missing:
        raise BenchError(f"nnU-Net left {len(missing)} test volume(s) unpredicted ({missing[:3]}...); "
                         f"see {logs}; not written as a result.")
    # 5. score
    scores = score_predictions(pred, gt, classes)
    stage_seconds["score"] = scores.pop("eval_seconds")
    if scores["scored_cases"] != len(test):
        raise BenchError(f"{scores['scored_cases']} of {len(test)} test volumes scored; not written as a result.")

    debug = json.loads((fold / "debug.json").read_text()) if (fold / "debug.json").is_file() else {}
    plans_data = json.loads(plans.read_text())
    cfg = plans_data.get("configurations", {}).get(args.config, {})
    epochs = _int(debug.get("num_epochs")) or epochs_of(args.trainer)
    run = {
        "trainer": args.trainer, "configuration": args.config, "fold": "all", "device": args.device,
        "epochs": epochs, "iterations_per_epoch": _int(debug.get("num_iterations_per_epoch")),
        "batch_size": cfg.get("batch_size"), "patch_size": cfg.get("patch_size"), "spacing": cfg.get("spacing"),
        "shots": args.shots, "seed": args.seed, "train_cases": train, "threads": args.threads,
        "da_workers": args.da_workers, "nice": os.nice(0),
        "stage_seconds": {**{k: shared.get(k) for k in ("raw", "plan_and_preprocess")},
                          **{k: stage_seconds.get(k) for k in ("train", "predict", "score")}},
        "fit_wall_seconds": (shared.get("plan_and_preprocess") or 0) + (stage_seconds.get("train") or 0),
        "stages_skipped_this_invocation": skipped,
        "commands": [
            f"nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c {args.config} --verify_dataset_integrity "
            f"-np {args.threads} -npfp {args.threads}",
            f"nnUNetv2_train {args.dataset_id} {args.config} all -tr {args.trainer} -device {args.device}",
            f"nnUNetv2_predict -i TEST_IMAGES -o OUT -d {args.dataset_id} -c {args.config} -f all -tr {args.trainer} "
            f"-device {args.device} -npp 1 -nps 1",
        ],
        "versions": _versions(args.nnunet_bin), **scores,
    }
    data = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if data.get("test_cases") not in (None, test):
        raise BenchError(f"{out_json}: scored on other test cases; not merged.")
    if smoke:
        print(json.dumps(run, indent=2))
        print("smoke run (--test-cases): not written to", out_json)
        return 0
    run["provenance"] = provenance.finish(prov)
    data.update({"data": args.data, "dataset": dataset.name, "test_cases": test,
                 "class_names": {str(c): dataset.classes[c] for c in classes},
                 "metric_note": "mean over test volumes and classes of DSC, NSD (2 mm) and HD95 (finite values), "
                                "as bench_fewshot.py aggregates its runs",
                 "provenance": run["provenance"]})
    data.setdefault("runs", {})[run_key(args.trainer, args.shots, args.seed, args.config)] = run
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_json, data)
    print_table(data)
    print(f"wrote {out_json}")
    return 0


def _seconds(value) -> str:
    return "not recorded" if value is None else f"{value:.0f}"


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
