"""Generate docs/benchmarks.md and the results blocks of README.md and docs/*.md from bench/results/*.json.

No result number in the documentation is typed by hand: every table, every headline figure and
every sentence that quotes a measurement is rendered here from the JSON the benchmark scripts
wrote, with the table code of those scripts (imported, not copied). Each table states its
conditions once, as recorded in its JSON (see bench/provenance.py); what a file does not hold is
shown as "not recorded".

    .venv/bin/python bench/tables.py           # rewrite docs/benchmarks.md and the marked blocks
    .venv/bin/python bench/tables.py --check   # exit 1 when any of them differs from the JSON

tests/test_docs_tables.py runs the check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
DEPLOY_MD = ROOT / "docs" / "deploy.md"
RECIPES_MD = ROOT / "docs" / "recipes.md"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

NR = "not recorded"
SELECTED_CANDIDATES_K = "k5"
TEST20_GLOB = "fewshot_hippocampus_test20*.json"


# ----------------------------------------------------------------------------- helpers

def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def captured(fn: Callable, *args) -> str:
    """What a bench script's print_table prints, as a string."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue().strip("\n")


def mean_sd(values: list[float], digits: int = 3) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def _first(*values):
    return next((v for v in values if v not in (None, "", [], {})), None)


def _load_avg(value) -> str:
    return NR if value is None else f"{value[0]:.2f}"


def _short(commit: str | None) -> str:
    return f"`{commit[:7]}`" if commit else NR


def conditions(name: str, data: dict, runs: list[dict] | None = None) -> str:
    """The conditions a result file records, one line; unknown fields say "not recorded"."""
    prov = data.get("provenance") or {}
    if not prov and runs:
        return _runs_conditions(name, data, runs)
    machine = data.get("machine") or {}
    sessions = data.get("sessions") or []
    smachine = (sessions[0].get("machine") or {}) if sessions else {}
    settings = {k: v for k, v in (data.get("settings") or {}).items() if not isinstance(v, dict)}
    args = data.get("args") or {}
    protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
    parts = [f"CPU model {prov.get('cpu_model') or NR}"]
    cpus = _first(prov.get("cpu_count"), machine.get("cpu_count"), machine.get("cpus"), data.get("cpu_count"),
                  smachine.get("cpus"))
    parts.append(f"CPUs {cpus or NR}")
    if runs is not None:  # runs of separate processes: threads recorded per run
        counts: dict[str, int] = {}
        for r in runs:
            t = r.get("threads")
            counts[NR if t is None else str(t)] = counts.get(NR if t is None else str(t), 0) + 1
        parts.append("threads per run: " + ", ".join(f"{t} ({n} runs)" for t, n in sorted(counts.items())))
    else:
        threads = _first(prov.get("torch_threads"), machine.get("torch_threads"), machine.get("threads"),
                         data.get("threads"), protocol.get("threads"), settings.get("threads"),
                         args.get("threads"), smachine.get("threads"))
        parts.append(f"threads {threads or NR}")
    if sessions:
        loads = [f"{_load_avg(s.get('loadavg_start'))} → {_load_avg(s.get('loadavg_end'))}" for s in sessions]
        parts.append("load average (1 min) at start → end: " + "; ".join(loads)
                     + (f" ({len(sessions)} sessions)" if len(sessions) > 1 else ""))
    elif "load_avg_1_5_15" in machine:
        parts.append(f"load average (1 min) when recorded {_load_avg(machine['load_avg_1_5_15'])}")
    else:
        start = _first(prov.get("load_avg_start"), machine.get("load_avg_start"), data.get("loadavg_start"))
        end = _first(prov.get("load_avg_end"), machine.get("load_avg_end"), data.get("loadavg_end"))
        parts.append(f"load average (1 min) at start {_load_avg(start)}, at end {_load_avg(end)}")
    parts.append(f"torch {_first(prov.get('torch'), machine.get('torch'), smachine.get('torch')) or NR}")
    parts.append(f"OpenVINO {prov.get('openvino') or NR}")
    parts.append(f"ONNX Runtime {prov.get('onnxruntime') or NR}")
    if runs is not None:
        known = [r["provenance"].get("resumed") for r in runs if r.get("provenance")]
        parts.append(f"resumed runs {sum(bool(x) for x in known)} of {len(known)} with a record"
                     if known else f"resumed {NR}")
    else:
        parts.append(f"resumed {NR if prov.get('resumed') is None else ('yes' if prov['resumed'] else 'no')}")
    if prov.get("git_commit"):
        dirty = {True: ", with uncommitted changes", False: ""}.get(prov.get("git_dirty"), ", dirty flag " + NR)
        parts.append(f"code {_short(prov['git_commit'])}{dirty}, {prov.get('utc_start') or NR} → "
                     f"{prov.get('utc_end') or NR}")
    else:
        parts.append(f"code commit {NR}")
        if prov.get("source") == "git history" and prov.get("file_added_commit"):
            parts.append(f"results file added in {_short(prov['file_added_commit'])} "
                         f"({prov['file_added_utc'][:10]}), last changed in "
                         f"{_short(prov['file_last_changed_commit'])} ({prov['file_last_changed_utc'][:10]}) "
                         "(git history)")
    return f"*Conditions recorded in `bench/results/{name}`:* " + " · ".join(parts) + "."


def _runs_conditions(name: str, data: dict, runs: list[dict]) -> str:
    """Conditions of runs that each carry their own provenance (merged files of one run each)."""
    provs = [r.get("provenance") or {} for r in runs]

    def values(key: str) -> str:
        found = sorted({str(p[key]) for p in provs if p.get(key) is not None})
        return ", ".join(found) if found else NR

    threads: dict[str, int] = {}
    for r in runs:
        t = NR if r.get("threads") is None else str(r["threads"])
        threads[t] = threads.get(t, 0) + 1
    loads = "; ".join(f"{_load_avg(p.get('load_avg_start'))} → {_load_avg(p.get('load_avg_end'))}" for p in provs)
    resumed = [p.get("resumed") for p in provs if "resumed" in p]
    commits = sorted({_short(p["git_commit"]) + (", with uncommitted changes" if p.get("git_dirty") else "")
                      for p in provs if p.get("git_commit")})
    parts = [f"CPU model {values('cpu_model')}", f"CPUs {values('cpu_count')}",
             "threads per run: " + ", ".join(f"{t} ({n} runs)" for t, n in sorted(threads.items())),
             f"load average (1 min) at start → end per run: {loads}",
             f"torch {values('torch')}", f"OpenVINO {values('openvino')}", f"ONNX Runtime {values('onnxruntime')}",
             f"resumed runs {sum(bool(x) for x in resumed)} of {len(resumed)} with a record",
             f"code {', '.join(commits) if commits else NR}",
             "UTC " + "; ".join(f"{p.get('utc_start') or NR} → {p.get('utc_end') or NR}" for p in provs)]
    return f"*Conditions recorded in `bench/results/{name}`:* " + " · ".join(parts) + "."


def section(anchor: str, title: str, level: int = 2) -> str:
    return f'<a id="{anchor}"></a>\n\n{"#" * level} {title}'


def measured_section(anchor: str, title: str, name: str, script: str, level: int = 2) -> tuple[dict | None, str]:
    """The result file ``name`` and its section's heading; without the file, the heading says how to make it."""
    data = load(name)
    head = section(anchor, title, level)
    return data, head if data is not None else f"{head}\n\nNot measured yet: `.venv/bin/python bench/{script}`."


def one_table_section(anchor: str, title: str, name: str, text: str, render: Callable[[dict], str],
                      runs: list[dict] | None = None) -> str:
    """Heading, what was measured, the JSON's conditions, then the table ``render`` makes of the JSON."""
    data = load(name)
    return "\n".join([section(anchor, title), "", text, "", conditions(name, data, runs), "", render(data)])


# ----------------------------------------------------------------------------- few-shot

def _fewshot_runs(data: dict) -> list[dict]:
    return [r for r in data["runs"].values() if "error" not in r]


def fewshot_table(name: str, data: dict) -> str:
    from bench_fewshot import print_table

    return captured(print_table, data)


def groups(data: dict) -> dict[str, list[tuple[str, dict]]]:
    out: dict[str, list[tuple[str, dict]]] = {}
    for key, r in data["runs"].items():
        parts = key.split("/")
        if len(parts) == 4 and "error" not in r:
            out.setdefault("/".join(parts[:3]), []).append((parts[3], r))
    return out


def prompt_free_candidates(data: dict) -> list[dict]:
    """Single-model prompt-free k = 5 runs grouped by recipe, with validation and test DSC per group."""
    rows = []
    for group, runs in groups(data).items():
        method, prompt, k = group.split("/")
        if prompt != "auto" or k != SELECTED_CANDIDATES_K or any("members" in r for _, r in runs):
            continue
        val = [r.get("best_val_dsc") for _, r in runs if r.get("best_val_dsc") is not None]
        rows.append({"recipe": method, "seeds": len(runs), "val": val,
                     "test": [r["dsc"] for _, r in runs], "steps": runs[0][1].get("max_steps")})
    rows.sort(key=lambda r: -np.mean(r["val"]) if r["val"] else 0.0)
    return rows


def selected_recipe(data: dict) -> dict:
    return prompt_free_candidates(data)[0]


def test20() -> tuple[dict | None, list[str]]:
    """The runs of every fewshot_hippocampus_test20*.json merged (first file wins a key)."""
    # a file without test cases is a run that has not written its first result yet
    files = [f for f in sorted(RESULTS.glob(TEST20_GLOB)) if "test_cases" in json.loads(f.read_text())]
    if not files:
        return None, []
    merged: dict = {"runs": {}}
    for f in files:
        d = json.loads(f.read_text())
        if merged.get("test_cases") not in (None, d["test_cases"]):
            raise SystemExit(f"{f}: scored on other test cases than {files[0].name}")
        merged["test_cases"] = d["test_cases"]
        if d.get("cpu_count") is not None:
            merged.setdefault("cpu_count", d["cpu_count"])
        for k, v in d.get("runs", {}).items():
            if "dsc" in v:  # not a stub such as {"skipped": ...} or an error
                merged["runs"].setdefault(k, v)
    return merged, [f.name for f in files]


def selection_section(data: dict) -> str:
    cands = prompt_free_candidates(data)
    best = cands[0]
    n_test = len(data["test_cases"])
    lines = [section("selection", "Choosing recipes: validation numbers and reporting numbers"), "",
             "Two kinds of numbers appear in these tables, and only one of them chooses anything.",
             "",
             "- **Used for choosing: validation DSC.** Every `medadapt fit` scores its validation cases (drawn "
             "from the training pool, never from the test set) during training; the best step's score is "
             "stored as `best_metric` in the run's `result.json` and as `best_val_dsc` in the benchmark "
             "JSON. It picks the checkpoint of a run, the largest-component post-processing of an "
             "automatic-mode run, and the prompt-free recipe below.",
             "- **Used only for reporting: held-out test DSC / NSD / HD95.** Each benchmark scores every "
             "run on a fixed test set that no run trains or validates on. These columns compare recipes "
             "for the reader; no recipe, step count or post-processing is chosen from them.",
             "",
             "**Prompt-free hippocampus recipe.** Rule: the highest mean validation DSC over seeds among "
             f"single-model prompt-free (`auto`) candidates at k = {SELECTED_CANDIDATES_K[1:]} "
             "(ensembles excluded). Candidates, best first (`fewshot_hippocampus.json`):",
             "",
             f"| candidate | seeds | steps | mean validation DSC (choosing) | test DSC, {n_test} volumes "
             "(reporting) |",
             "|---|---|---|---|---|"]
    for c in cands:
        name = f"**{c['recipe']}**" if c is best else c["recipe"]
        lines.append(f"| {name} | {c['seeds']} | {c['steps'] or '–'} | {mean_sd(c['val'])} | "
                     f"{mean_sd(c['test'])} |")
    val_best = np.mean(best["val"])
    lines += ["", f"Selected: `{best['recipe']}` (mean validation DSC {val_best:.3f} over "
              f"{len(best['val'])} seeds). The {n_test}-volume test scores above were visible when these "
              "candidates were run, so they are not an unbiased estimate for the selected recipe; the "
              "report for it is its re-run scored on all test volumes of the fixed split:", ""]
    merged, files = test20()
    if merged is None:
        lines.append(f"*Pending: `bench/results/{TEST20_GLOB}` (the selected recipe, 3 seeds, scored on "
                     "every test volume) is not in the repository yet.* Command, one process per seed:")
        lines += ["", "```bash", ".venv/bin/python bench/bench_fewshot.py --data ../shared/data/hippocampus "
                  "--name hippocampus_test20_s0 \\",
                  "    --methods adapter --prompts auto --shots 5 --seeds 0 --max-steps 300 --lr 1e-3 "
                  "--threads 1 \\",
                  "    --fit-set frozen_stages=2 precision=bf16 slice_axis=0 augment_stem=true "
                  "augment_flips=false augment_translate=0.15 \\",
                  "    --tag +fs2-300-sag-aug --no-zero-shot", "```"]
    else:
        runs = [r for r in merged["runs"].values() if "error" not in r]
        lines += [conditions(TEST20_GLOB, merged, runs), "", fewshot_table(files[0], merged), "",
                  "Files: " + ", ".join(f"`bench/results/{f}`" for f in files) + "."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections

FEWSHOT_COMMAND = (".venv/bin/python bench/bench_fewshot.py --data ../shared/data/hippocampus --name hippocampus "
                   "--methods M --prompts P --shots K --seeds S --max-steps N --test-cases 5 [--lr LR] "
                   "[--method-lr M=LR] [--encoder-engine openvino [--cold-cache]] [--fit-set KEY=VALUE ...] "
                   "[--tag T]")

FEWSHOT_KEY = """Row names are `recipe[+variant]/prompt/k`: `+ov` fills the embedding cache with the OpenVINO
fp32 encoder (`--encoder-engine openvino`, the same embeddings as eager fp32), `-cold` starts from an
empty cache (the fit time then includes encoding every slice and the one-time export), `+fs2` is
`--frozen-stages 2 --precision bf16`, `-300` / `-400` / `-800` the step count, `-sag` / `-cor`
sagittal / coronal slices (`--slice-axis 0` / `1`), `-aug` image augmentation of the frozen-stem
input (`--set augment_stem=true --set augment_flips=false --set augment_translate=0.15`), `ax+sag`
an ensemble of an axial and a sagittal run (`--adapter A --adapter B`; scored when ensembles averaged class
logits, before they averaged class probabilities). `fit s` is the wall time of
the `medadapt fit` process; where several runs shared the machine (threads per run below) it
measures throughput, not a user's wait. Runs resumed after an interruption are left out of `fit s` and
`peak MB` (their last process did only part of the fit)."""


def fewshot_section(anchor: str, title: str, name: str, intro: str) -> str:
    data = load(name)
    if data is None:
        return f"{section(anchor, title)}\n\n*`bench/results/{name}` is not in the repository.*"
    return "\n".join([section(anchor, title), "", intro, "", conditions(name, data, _fewshot_runs(data)), "",
                      fewshot_table(name, data)])


def mirror_section() -> str:
    from bench_mirror import print_table

    out = [section("mirroring", "Test-time mirroring"), "",
           "`bench/bench_mirror.py` re-scores finished automatic-mode adapters with and without "
           "`--mirror` (each image also segmented left-right mirrored, class logits averaged) on the "
           "same held-out cases: a paired comparison. The eval-seconds columns are not a speed "
           "comparison (the plain pass reads cached embeddings, the mirrored pass encodes the mirrored "
           "slices)."]
    for name, label in (("mirror_drive.json", "DRIVE"), ("mirror_hippocampus.json", "Hippocampus")):
        data = load(name)
        if data is not None:
            out += ["", f"**{label}**", "", conditions(name, data, list(data["runs"].values())), "",
                    captured(print_table, data)]
    return "\n".join(out)


def zoom_section() -> str | None:
    """Image enlarging and ROI crops on validation cases (bench/results/zoom_*.json); None before any run."""
    from bench_zoom import print_table

    names = sorted(p.name for p in RESULTS.glob("zoom_*.json"))
    if not names:
        return None
    out = [section("zoom", "Small structures: image enlarging and ROI crops"), "",
           "`bench/bench_zoom.py` segments validation cases (never test cases) with box prompts from the labels, "
           "with the official preprocessing (`official`: cv2 INTER_AREA for LiteMedSAM) or another interpolation "
           "(`bilinear`, `cubic`) enlarging images smaller than the model input, on whole slices (`full`) or in a "
           "crop around each box (`roiM`: `--roi-margin M`). Δ DSC and the rows better / worse are paired with "
           "`official/full` (same case and class). `box`: a box per class and slice; `box3d`: one 3D box per "
           "class, propagated slice by slice (the interactive protocol's start). The defaults follow these "
           "tables: a zero-shot model enlarges bilinearly (ahead with both prompt kinds; no change on images "
           "as large as the input), an adapted run keeps the official preprocessing `fit` trains with (mixed "
           "on the box-trained decoder), and ROI crops stay off (ahead with per-slice boxes, behind with 3D "
           "boxes)."]
    for name in names:
        data = load(name)
        out += ["", f"**{name.removeprefix('zoom_').removesuffix('.json')}**", "", conditions(name, data), "",
                captured(print_table, data)]
    return "\n".join(out)


def determinism_section() -> str:
    from bench_determinism import print_table

    name = "determinism_hippocampus.json"
    return one_table_section("determinism", "Determinism", name,
                             "`bench/bench_determinism.py` repeats one `medadapt fit` as separate processes, one "
                             "after another, and compares every adapter tensor with the first run's. Same seed "
                             "and thread count: compare the `bitwise equal` column.",
                             lambda d: captured(print_table, d), runs=load(name)["runs"])


def inference_section() -> str:
    from bench_inference import print_tables

    return one_table_section("inference", "Inference speed", "inference.json",
                             "`.venv/bin/python bench/bench_inference.py --cases 12 --repeats 3 --batch 8`: "
                             "LiteMedSAM encoder latency, then whole hippocampus volumes with a 2D box per class "
                             "on every labelled slice, the official per-object batch-1 path against the "
                             "embedding cache on each engine and precision. ΔDSC is against the official path.",
                             lambda d: captured(print_tables, d))


def batching_sentence(data: dict) -> str:
    """Which engines are faster per slice at batch B than at batch 1, from deploy.json."""
    batch = int(data["args"]["batch"])
    faster, slower = [], []
    for name, r in data["encoder"].items():
        (faster if r[f"batch{batch}_ms"] < r["batch1_ms"] else slower).append(f"{name}")
    return (f"Batching {batch} slices per encoder call measured faster per slice than batch 1 for "
            f"{', '.join(faster) or 'no engine'}, and slower for {', '.join(slower) or 'no engine'} "
            f"(`bench/results/deploy.json`, {data['machine'].get('torch_threads', NR)} threads).")


def deploy_section() -> str:
    from bench_deploy import print_tables

    name = "deploy.json"
    data = load(name)
    batch = int(data["args"]["batch"])
    base = data["encoder"]["torch fp32"]["batch1_ms"]
    ref = data["volumes"].get("torch fp32", {}).get("mean_dsc")
    out = [section("deploy", "Deployment: engines and precisions"), "",
           "`.venv/bin/python bench/bench_deploy.py --cases 4 --repeats 5 --batch 8`: every engine × "
           "precision; encoder latencies in interleaved rounds (every configuration once per round), the "
           "last hippocampus volumes with CVPR24 3D boxes and propagation, a synthetic CT-sized volume, "
           "and `medadapt predict` on CVPR24 `.npz` files as one process per case (start-up and model "
           "load included). int8 encoders are calibrated on slices of the first hippocampus cases.", "",
           conditions(name, data), "", captured(print_tables, data, batch, base, ref), "", batching_sentence(data)]
    student = load("deploy_student.json")
    if student is not None:
        sb = int(student["args"]["batch"])
        out += ["", "**Distilled student, encoder only** (`--model litemedsam_student_s --checkpoint F "
                "--encoder-only`):", "", conditions("deploy_student.json", student), "",
                captured(print_tables, student, sb, student["encoder"]["torch fp32"]["batch1_ms"], None)
                .split("\n\nHippocampus")[0]]  # encoder only: the volume tables are empty
    return "\n".join(out)


def distill_section() -> str:
    from bench_distill import print_table

    name = "distill.json"
    data = load(name)
    s = data["settings"]
    return "\n".join([section("distill", "Distilled student encoder"), "",
                      f"`.venv/bin/python bench/bench_distill.py --student {s['student']} --train-slices "
                      f"{s['train_slices']} --steps {s['steps']} --batch-size {s['batch_size']} --lr {s['lr']} "
                      f"--precision {s['precision']} --val-slices {s['val_slices']} --test-volumes "
                      f"{s['test_volumes']} --repeats {s['repeats']}`: the student is seeded from the "
                      "teacher's blocks and distilled on slices of the training volumes of the hippocampus "
                      "few-shot split; both encoders then segment held-out volumes of that split with a 2D "
                      "box per class on every labelled slice. Latency: one 256×256 slice, batch 1, median. "
                      f"Validation cosine similarity to the teacher's embedding: "
                      f"{data['distill']['initial_val_cos']:.2f} before distillation.", "",
                      conditions(name, data), "", captured(print_table, data)])


def classification_section() -> str:
    from bench_classification import markdown_table

    out = [section("classification", "Classification at 1 / 10 / 100 % of labels (PneumoniaMNIST)"), ""]
    for name, earlier in (("classification.json", False), ("classification_20steps.json", True)):
        data = load(name)
        if data is None:
            continue
        p = data["protocol"]
        head = (f"`.venv/bin/python bench/bench_classification.py --steps {p['steps']}`: "
                f"{data['choices']}. AUROC mean ± sd over seeds.")
        if earlier:
            seeds = sorted({r["seed"] for r in data["runs"]})
            methods = list(dict.fromkeys(r["method"] for r in data["runs"]))
            head = (f"**An earlier run** (`bench/results/{name}`: seeds {', '.join(map(str, seeds))}; methods "
                    f"{', '.join(methods)}): " + head)
        out += [head, "", conditions(name, data), "", markdown_table(data["runs"]), ""]
    return "\n".join(out).rstrip()


def volumetric_section() -> str:
    from bench_volumetric import table

    out = [section("volumetric", "3D few-shot (FSEFT)"), ""]
    for name, label in (("volumetric.json", None), ("volumetric_v1_40steps.json", "The first protocol")):
        data = load(name)
        if data is None:
            continue
        st = data["settings"]
        arch = st["arch"]
        desc = (f"`medadapt pretrain` trains a 3D U-Net ({arch['filters']} filters, {st['roi']}³ crops, "
                f"{st['spacing']}) on the anterior hippocampus for {st['pretrain_steps']} steps; `medadapt fit "
                f"--task volumetric` adapts it to the posterior hippocampus or to both classes from k volumes, "
                f"{st['steps']} steps, learning rates {', '.join(f'{m} {lr:g}' for m, lr in st['lr'].items())}; "
                "`medadapt evaluate --task volumetric` scores "
                "the held-out volumes on their original grid. `+T`: transductive proportion constraint.")
        if label:
            out += [f"**{label}** (`bench/results/{name}`): " + desc]
        else:
            out += ["`.venv/bin/python bench/bench_volumetric.py`: " + desc + " The learning rates were "
                    "picked on one cell (posterior, k = 5, seed 0) scored on its held-out volumes, so that "
                    "cell is optimistic."]
        out += ["", conditions(name, data), table(data), ""]
    return "\n".join(out).rstrip()


def side_by_side_section() -> str:
    from bench_side_by_side import table

    return one_table_section("side-by-side", "3D model and LiteMedSAM side by side", "side_by_side.json",
                             "`.venv/bin/python bench/bench_side_by_side.py`: the k = 5 LiteMedSAM runs of the "
                             "few-shot table re-scored on every held-out hippocampus volume, next to the 3D "
                             "recipes of the table above on the same volumes. Box mode reads its boxes from the "
                             "ground truth, an oracle prompt the 3D model never gets.", table)


NNUNET_COMMAND = ("nice -n 15 .venv/bin/python bench/bench_nnunet.py --data ../shared/data/hippocampus --name "
                  "hippocampus --shots K --seed S --trainer TRAINER --threads 1 "
                  "--nnunet-bin NNUNET_VENV/bin")


def nnunet_section() -> str:
    """nnU-Net v2 trained on medadapt's k-shot training cases, scored on the fixed test volumes
    (bench_nnunet.py), one table per ``nnunet_<name>.json``."""
    from bench_nnunet import print_table

    head = section("nnunet", "nnU-Net v2 on the same k-shot splits")
    files = sorted(RESULTS.glob("nnunet_*.json"))
    intro = (f"`{NNUNET_COMMAND}`: nnU-Net v2 (`nnunetv2`, in its own environment) is given only the k training "
             "cases of medadapt's split for the seed, in its raw format; it plans and preprocesses them itself, "
             "trains its configuration on fold `all` with the shorter-schedule trainer named in the row "
             "(the standard `nnUNetTrainer` trains 1000 epochs × 250 iterations) on the CPU, and predicts the "
             "fixed held-out volumes, which are scored with `medadapt evaluate`'s metrics and averaged as the "
             "few-shot tables average (mean over volumes and classes; HD95 over finite values). Times are wall "
             "seconds of each nnU-Net command.")
    if not files:
        return "\n".join([head, "", intro, "", "Not measured yet."])
    out = [head, "", intro]
    for path in files:
        data = json.loads(path.read_text())
        title = data.get("dataset") or path.stem.removeprefix("nnunet_")
        out += ["", f"### {title}", "", conditions(path.name, data, list(data.get("runs", {}).values())), "",
                captured(print_table, data)]
    return "\n".join(out)


#: Datasets of the automatic-segmentation comparison (bench_best.py / bench_nnunet.py / few-shot results).
BEST_DATASETS = ("hippocampus", "cardiac_mri", "drive")


def _prompt_free_rows(name: str, k: int) -> list[tuple[str, list[dict], str, str]]:
    """(row label, runs, fit-seconds key, source) of every prompt-free model of a dataset with k training cases."""
    rows = []
    nn_file = f"nnunet_{name}.json"
    trainers: dict[str, list[dict]] = {}
    for r in ((load(nn_file) or {}).get("runs") or {}).values():
        if r["shots"] == k:
            trainers.setdefault(f"nnU-Net v2 {r['configuration']}, {r['trainer']} ({r['epochs']} × "
                                f"{r['iterations_per_epoch']} it.)", []).append(r)
    rows += [(label, runs, "fit_wall_seconds", nn_file) for label, runs in trainers.items()]
    if name == "hippocampus":
        vol = load("volumetric.json") or {}
        vol_threads = (vol.get("settings") or {}).get("threads")  # the file records its thread count once
        scratch = [{"threads": vol_threads, **r} for key, r in (vol.get("runs") or {}).items()
                   if key.startswith(f"both/k{k}/") and key.endswith("/scratch")]
        if scratch:
            rows.append(("medadapt 3D U-Net from scratch", scratch, "fit_seconds", "volumetric.json"))
        few, source = test20()[0] or {}, TEST20_GLOB
    else:
        few, source = load(f"fewshot_{name}.json") or {}, f"fewshot_{name}.json"
    recipes: dict[str, list[dict]] = {}
    for key, r in (few.get("runs") or {}).items():
        if f"/auto/k{k}/" in key and "dsc" in r and "members" not in r:  # no prompt, one model
            recipes.setdefault(key.split("/")[0], []).append({"threads": few.get("threads"), **r})
    rows += [(f"medadapt LiteMedSAM `{recipe}`, no prompt", runs, "fit_wall_seconds", source)
             for recipe, runs in recipes.items()]
    best = [r for r in ((load(f"best_{name}.json") or {}).get("runs") or {}).values() if r["shots"] == k]
    if best:
        chosen = ", ".join(sorted({r["chosen"] for r in best}))
        budget = ", ".join(sorted({f"{r['budget_seconds'] / 60:g} min" for r in best}))
        rows.append((f"medadapt `fit --method best` (budget {budget}; chose {chosen})", best, "fit_wall_seconds",
                     f"best_{name}.json"))
    return rows


def _comparison_table(name: str) -> str | None:
    """Every prompt-free model of one dataset beside nnU-Net, per k (None when nothing is measured)."""
    lines = ["| k | model / recipe | seeds | DSC | NSD 2 mm | HD95 mm | fit s | threads | results file |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in (1, 5, 10):
        for label, runs, fit_key, source in _prompt_free_rows(name, k):
            threads = ", ".join(map(str, sorted({r["threads"] for r in runs if r.get("threads")}))) or NR
            fit = [r.get(fit_key) for r in runs if not (r.get("provenance") or {}).get("resumed")]
            lines.append(f"| {k} | {label} | {len(runs)} | {mean_sd([r['dsc'] for r in runs])} | "
                         f"{mean_sd([r['nsd'] for r in runs])} | {mean_sd([r['hd95'] for r in runs], 2)} | "
                         f"{mean_sd(fit, 0)} | {threads} | `{source}` |")
    return "\n".join(lines) if len(lines) > 2 else None


def best_section() -> str:
    """``fit --method best`` (bench_best.py), then every prompt-free model beside nnU-Net per k and dataset."""
    from bench_best import print_table

    head = section("best", "Automatic segmentation from k volumes, beside nnU-Net")
    intro = ("`.venv/bin/python bench/bench_best.py --shots 1 5 10 --seeds 0 1 2 --budget 30m --threads 2`: "
             "`medadapt fit --method best` on the k training volumes of each seed's split (cross-validation over "
             "those volumes only; k = 1 takes the documented fixed choice), scored on the dataset's fixed test "
             "volumes (hippocampus: the 20 of every hippocampus table). Below each dataset's selection table, "
             "every prompt-free model measured on the same test cases side by side: nnU-Net v2 ([nnunet](#nnunet)), "
             "medadapt's single recipes and `--method best` (mean ± sd over the seeds listed; fit s: wall seconds "
             "of the fit, with the threads shown, runs resumed after an interruption left out). A row with fewer "
             "seeds than another is not an average over the same splits. 2D images are scored in pixels (spacing 1): "
             "their NSD tolerance and HD95 are in pixels.")
    out = [head, "", intro]
    for name in BEST_DATASETS:
        data = load(f"best_{name}.json")
        table = _comparison_table(name)
        if data is None and table is None:
            continue
        out += ["", f"### {name}"]
        if data is not None:
            out += ["", conditions(f"best_{name}.json", data, list(data.get("runs", {}).values())), "",
                    captured(print_table, data)]
        else:
            out += ["", f"`fit --method best` not measured on {name} yet."]
        if table is not None:
            out += ["", table]
        if load(f"nnunet_{name}.json") is None:
            out += ["", f"nnU-Net v2 not measured on {name} yet (`bench/bench_nnunet.py`)."]
    if len(out) == 3:
        out += ["", "Not measured yet."]
    return "\n".join(out)


def metrics_section() -> str:
    from bench_metrics import print_table

    return one_table_section("metrics", "Metrics speed", "metrics.json",
                             "`.venv/bin/python bench/bench_metrics.py`: DSC + NSD + HD95 on synthetic "
                             "512×512×200 pairs, MONAI's NSD on the same pair, and all reference cases.",
                             lambda d: captured(print_table, d))



def _repo_relative(command: str) -> str:
    """A recorded command with the machine's absolute data path shown as the README writes it
    (``../shared/...`` beside the repository), so a table does not name one machine's folders."""
    return re.sub(r"(?<!\S)/\S*?/shared/", "../shared/", command)


def _encoding(cache: dict | None) -> str:
    """Seconds spent filling the embedding cache and the slices encoded, as the fit recorded them."""
    if not cache or cache.get("encode_seconds") is None:
        return f"{NR} ({cache['misses']})" if cache else NR
    return f"{cache['encode_seconds']:.0f} ({cache['misses']})"


def default_fit_section() -> str:
    """The 5-shot ``decoder`` box fit with default settings from a cold cache (bench_default_fit.py)."""
    name = "default_fit.json"
    head = section("default-fit", "Default 5-shot fit from a cold cache")
    data = load(name)
    if data is None or data.get("smoke"):
        return head + "\n\nNot measured yet: `.venv/bin/python bench/bench_default_fit.py` writes `bench/results/default_fit.json`."
    table = "\n".join([
        "| encoder engine (default) | steps | fit wall s | of which encoding s (slices) | best val DSC | held-out DSC | NSD 2 mm | HD95 mm | held-out volumes |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {data.get('encoder_engine') or NR} | {data.get('steps') or NR} | {data['fit_wall_seconds']:.0f} | "
        f"{_encoding(data.get('embedding_cache'))} | "
        f"{data['best_val_dsc']:.3f} | {data['dsc']:.3f} | {data['nsd']:.3f} | {data['hd95']:.2f} | "
        f"{len(data['test_cases'])} |",
    ])
    return "\n".join([head, "", f"`{_repo_relative(data['command'])}` with nothing else (fresh `MEDADAPT_CACHE`, no `--cache-dir`): "
                       "the wall time includes the one-time encoder export and filling the embedding cache; the "
                       "adapter is scored as the few-shot matrix scores its runs.", "",
                       conditions(name, data), "", table])


def interactive_latency_section() -> str:
    """Per-click latency of the interactive session (bench_interactive.py)."""
    name = "interactive_latency.json"
    data, head = measured_section("interactive-latency", "Interactive clicks: latency per re-decoded slice", name,
                                  "bench_interactive.py")
    if data is None:
        return head
    cols = (("engine", "decoder"), ("threads", "threads"), ("ms_per_decoded_slice", "ms per re-decoded slice"),
            ("ms_per_click", "ms per click"), ("decoder_ms", "ms per bare decoder call"),
            ("decoded_slices", "slices re-decoded"), ("clicks", "clicks"), ("dsc_vs_reference", "final DSC vs reference"))

    def cell(r: dict, k: str) -> str:
        v = r.get(k)
        if k == "dsc_vs_reference":
            return "–" if v is None else f"{v:+.3f} (vs {r['dsc_reference']})"
        if f"{k}_range" in r and len(r.get("rounds", [])) > 1:  # median over rounds (their range)
            lo, hi = r[f"{k}_range"]
            return f"{v:.0f} ({lo:.0f}–{hi:.0f})"
        return f"{v:.0f}" if isinstance(v, float) else str(r.get(k, NR))

    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    for r in data["runs"]:
        lines.append("| " + " | ".join(cell(r, k) for k, _ in cols) + " |")
    return "\n".join([head, "", "`bench/bench_interactive.py`: zero-shot LiteMedSAM on cached hippocampus test "
                       "volumes, simulated clicks; every click re-decodes the clicked slice and the neighbours "
                       "its change reaches. `engine:int8` / `engine:bf16`: the int8 (dynamic) or bf16 mask decoder "
                       "(`--decoder-precision`), faster and not equal to fp32; \"final DSC vs reference\" is the change "
                       "in mean final DSC over the objects against the same engine's fp32 decoder (or torch, for an fp32 "
                       "export); the clicks follow each run's own masks. Timings are medians over the rounds recorded in the "
                       "file (every engine measured once per round, in a rotated order), the rounds' range in "
                       "brackets.", "",
                       conditions(name, data), "", "\n".join(lines)])


def decoder_graphs_section() -> str:
    """Bare call of each exported decoder graph (bench_decoder_graphs.py)."""
    name = "decoder_graphs.json"
    data, head = measured_section("decoder-graphs", "Exported decoder graphs: one call", name,
                                  "bench_decoder_graphs.py", level=3)
    if data is None:
        return head
    lines = ["| graph | decoder | ONNX Runtime optimisations | threads | ms per call |", "|---|---|---|---|---|"]
    for r in data["runs"]:
        lo, hi = r["ms_range"]
        lines.append(f"| {r['graph']} | {r['decoder_precision']} | {r['optimisers']} | {r['threads']} | "
                     f"{r['ms']:.1f} ({lo:.1f}–{hi:.1f}) |")
    return "\n".join([head, "", "`bench/bench_decoder_graphs.py`: one call of the full `mask_decoder` graph (any decode) "
                       "and of the `cached_decoder` graph a click runs on a slice decoded before (the slice's "
                       "`decoder_image` reused), LiteMedSAM, one hippocampus slice, a box and one click. `default`: "
                       "the session options `DeployedSam` uses (SkipLayerNormalization fusion off for decoder graphs); "
                       "`+SkipLayerNormFusion`: that fusion left on. Median over rounds of each round's mean call "
                       f"({data['calls_per_round']} calls), the rounds' range in brackets.", "",
                       conditions(name, data), "", "\n".join(lines)])


def click_pipeline_section() -> str:
    """Clicks through the whole exported ONNX Runtime pipeline, decoder thread spinning on / off (bench_click_pipeline.py)."""
    name = "click_pipeline.json"
    data, head = measured_section("click-pipeline", "Exported pipeline: clicks as `simulate --engine onnxruntime` "
                                  "runs them", name, "bench_click_pipeline.py", level=3)
    if data is None:
        return head
    lines = ["| decoder | decoder graphs' thread spinning | ms per re-decoded slice | start: s per volume | "
             "slices re-decoded per round |", "|---|---|---|---|---|"]
    for r in data["runs"]:
        (lo, hi), (slo, shi) = r["ms_per_decoded_slice_range"], r["start_s_range"]
        spin = "on (ONNX Runtime's default)" if r["decoder_spinning"] else "off (`DeployedSam`'s default)"
        lines.append(f"| {r['decoder_precision']} | {spin} | {r['ms_per_decoded_slice']:.1f} ({lo:.1f}–{hi:.1f}) | "
                     f"{r['start_s']:.1f} ({slo:.1f}–{shi:.1f}) | {r['decoded_slices']} |")
    cases = ", ".join(data["cases"])
    return "\n".join([head, "", "`bench/bench_click_pipeline.py`: the predictor `medadapt simulate --engine onnxruntime` "
                       "loads (every graph of the LiteMedSAM export on ONNX Runtime, torch doing the work between them) "
                       f"and the command's protocol on validation volumes of the fixed hippocampus split ({cases}): a 3D "
                       f"box per class, then {data['clicks']} clicks, {data['threads']} threads. The [latency table](#interactive-latency) "
                       "times the decoder side alone on torch-encoded embeddings. Thread spinning: whether ONNX Runtime's worker "
                       "threads of the prompt and decoder graphs' sessions spin between calls (the image encoder's spin "
                       "in both rows). The two settings alternate per volume, each running the whole protocol on its own "
                       "predictor; every object's scores after every step are equal between them. `start`: the first "
                       "interaction per volume (encoding the box's slices, decoding them). Medians over the rounds, the "
                       "rounds' range in brackets.", "",
                       conditions(name, data), "", "\n".join(lines)])


def interactive_accuracy_section() -> str:
    """Box + simulated clicks on held-out volumes, per configuration (bench_clicks.py)."""
    head = section("interactive-accuracy", "Interactive segmentation: DSC after the box and each click")
    files = sorted(RESULTS.glob("interactive_*.json"))
    files = [f for f in files if f.name != "interactive_latency.json"]
    if not files:
        return head + "\n\nNot measured yet: `.venv/bin/python bench/bench_clicks.py`."
    out = [head, "", "`bench/bench_clicks.py`: `medadapt simulate` per configuration on the fixed test volumes: "
           "a 3D box per class, then corrective clicks at the deepest point of the largest error region (the "
           "CVPR 2025 rule); mean over objects (case × class). Clicks to the target: median over objects, "
           "objects that never reach it counted as one click beyond the budget. DSC-AUC / NSD-AUC are the "
           "official trapezoid over the N predictions after the clicks (unit steps: range 0 to N-1). Objects = "
           "test volumes scored (the first of the fixed test set) × classes. Adapters were fitted on 5 training "
           "volumes with the seed shown; none of these numbers chose a recipe. `resize`: how slices smaller than "
           "the model input were enlarged (see [zoom](#zoom)). `zoom-in`: the ROI margin when every slice of an object was "
           "segmented in a crop around its box (`simulate --roi-margin`; –: whole slices). `start`: the first "
           "prediction (box: the box prompt, a 3D box on volumes; box per slice: a 2D box on every slice of the label, "
           "the protocol's option; auto: an automatic-mode adapter's prediction, no prompt). `decoder`: the engine that ran "
           "the model (torch, or an export: `simulate --engine`) and a mask decoder faster than fp32 if one was asked for "
           "(`--decoder-precision`, see [interactive](interactive.md#latency)). `click window`: a click changes its slice only within a "
           "square of that many times the object's box side around it (–: the whole slice; see "
           "[interactive](interactive.md#click-window)). Times are under the load shown, "
           "not quiet-core latencies (those are in the next table)."]
    for path in sorted(files, key=lambda f: f.stem.endswith("_val")):  # test tables first
        data = json.loads(path.read_text())
        runs = list(data["runs"].values())
        if not runs:
            continue
        n = max(r["clicks"] for r in runs)
        target = runs[0]["target"]
        cols = ["configuration", "start", "resize", "zoom-in", "decoder", "click reach (slices)", "click window", "objects", "after start", *[f"+{k} click{'s' if k > 1 else ''}" for k in range(1, n + 1)],
                "DSC-AUC", "NSD-AUC", f"median clicks to {target:.2f}", f"reach {target:.2f}", "ms / re-decoded slice"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in runs:
            steps = [f"{v:.3f}" for v in r["dsc_per_interaction"]] + [""] * (n + 1 - len(r["dsc_per_interaction"]))
            share = r.get("share_reaching_target")
            ms = r.get("ms_per_decoded_slice")
            reach = r.get("click_reach", 0)  # results written before the click reach existed carried no click
            resize = r.get("resize") or "official"  # results written before --resize existed: the official path
            window = r.get("click_window")  # none recorded: the whole slice (results before the option existed)
            roi = r.get("roi_margin")  # none recorded: whole slices (results before sessions could zoom in)
            start = {"auto": "auto", "box2d": "box per slice"}.get(r.get("start"), "box")  # none recorded: a box
            decoder = r.get("engine", "torch") + ("" if r.get("decoder_precision", "fp32") == "fp32" else f" {r['decoder_precision']}")
            lines.append("| " + " | ".join([r["config"], start, f"`{resize}`", "–" if roi is None else f"{float(roi):g}", decoder, str(reach), "–" if window is None else f"{window:g}",
                                             str(r["objects"]), *steps, f"{r['dsc_auc']:.3f}",
                                             f"{r['nsd_auc']:.3f}", f"{r['median_clicks_to_target']:g}",
                                             NR if share is None else f"{share:.0%}",
                                             NR if ms is None else f"{ms:.0f}"]) + " |")
        dataset = path.stem.removeprefix("interactive_")
        title = f"**{dataset}** (`bench/results/{path.name}`)"
        if dataset.endswith("_val"):
            base = dataset.removesuffix("_val")
            what = "click window" if base.endswith("_window") else "click reach"
            title = (f"**{base.removesuffix('_window')}, validation cases, {what} sweep** (`bench/results/{path.name}`): "
                     "the validation cases of the fixed split (`--cases-from val`), used to choose the session's "
                     "default click reach (slices a click is carried to on each side, see "
                     "[interactive](interactive.md#click-reach)) and click window (see "
                     "[interactive](interactive.md#click-window)); not a test score")
            sel = data.get("selection") or {}
            if "click_reach" in sel:
                window = sel.get("click_window")
                title += (f". Best here: click reach {sel['click_reach']}, click window "
                          f"{'none' if window is None else f'{window:g}'} ({sel.get('criterion', NR)}; "
                          f"{len(sel.get('cases', []))} validation case(s): {', '.join(sel.get('cases', []))})")
        out += ["", title, "",
                conditions(path.name, {"provenance": runs[-1].get("provenance"), "threads": runs[-1].get("threads")})
                + " (the last configuration's run)", "", "\n".join(lines)]
        seeds = _click_seed_table(runs) if not dataset.endswith("_val") else None
        if seeds:
            out += ["", f"{dataset}, configurations fitted with several seeds (mean ± sd over the seeds, each on the "
                    "same test objects):", "", seeds]
    return "\n".join(out)


def _click_seed_table(runs: list[dict]) -> str | None:
    """Rows of the click table that differ only in the fit seed (``.../s<N>/...``), as mean ± sd over the seeds."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = re.sub(r"/s\d+(?=/|$)", "", r["config"])
        if key != r["config"]:
            groups.setdefault(key, []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1 and len({r["objects"] for r in v}) == 1}
    if not groups:
        return None
    lines = ["| configuration | seeds | objects | after start | +last click | DSC-AUC | NSD-AUC | median clicks to target |",
             "|---|---|---|---|---|---|---|---|"]
    for key, rs in groups.items():
        lines.append(f"| {key} | {len(rs)} | {rs[0]['objects']} | {mean_sd([r['dsc_per_interaction'][0] for r in rs])} | "
                     f"{mean_sd([r['dsc_per_interaction'][-1] for r in rs])} | {mean_sd([r['dsc_auc'] for r in rs])} | "
                     f"{mean_sd([r['nsd_auc'] for r in rs])} | "
                     f"{mean_sd([r['median_clicks_to_target'] for r in rs], 1)} (target {rs[0]['target']:.2f}) |")
    return "\n".join(lines)


def studio_loop_section() -> str:
    """A simulated annotator in the studio, with and without adaptation in the loop (bench_studio_loop.py)."""
    name = "studio_loop.json"
    data, head = measured_section("studio-loop", "Studio: clicks per case with and without adaptation in the loop",
                                  name, "bench_studio_loop.py")
    if data is None:
        return head
    modes = data["modes"]
    target, budget = data["target_dsc"], data["max_clicks"]
    cols = ["case"]
    for mode in modes:
        label = "adapted in the loop" if mode == "adapt" else "zero-shot throughout"
        cols += [f"{label}: clicks", "mean DSC", "interaction s"] + (["fit wall s", "fit CPU s"] if mode == "adapt" else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in range(max(len(rows) for rows in modes.values())):
        cells = [str(i + 1)]
        for mode, rows in modes.items():
            r = rows[i] if i < len(rows) else None
            if r is None:
                cells += [""] * (5 if mode == "adapt" else 3)
                continue
            dsc = np.mean(list(r["dsc"].values())) if r["dsc"] else float("nan")
            cells += [str(r["clicks"]) + ("" if r["reached"] else " (not reached)"), f"{dsc:.3f}", f"{r['seconds']:.1f}"]
            if mode == "adapt":
                cells += [f"{r['fit_seconds']:.0f}", NR if r.get("fit_cpu_seconds") is None else f"{r['fit_cpu_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    summary = []
    for mode, rows in modes.items():
        clicks = [r["clicks"] for r in rows]
        text = f"{'adapted' if mode == 'adapt' else 'zero-shot'}: {sum(clicks)} clicks in {len(rows)} cases"
        if len(rows) >= 5:
            text += f", case 1 → case 5: {clicks[0]} → {clicks[4]} clicks"
        if len(rows) >= 2:  # case 1 is labelled before any fit, the same in both modes
            later = [np.mean(list(r["dsc"].values())) for r in rows[1:] if r["dsc"]]
            text += f", mean DSC of cases 2–{len(rows)} {np.mean(later):.3f}"
        if mode == "adapt":
            cpu = [r.get("fit_cpu_seconds") for r in rows]
            text += (f", in-loop fits {sum(r['fit_seconds'] for r in rows):.0f} s wall"
                     + (f", {sum(cpu):.0f} s CPU" if all(c is not None for c in cpu) else ""))
        summary.append(text)
    intro = (f"`bench/bench_studio_loop.py --cases {len(data['cases'])} --steps {data['steps']}`: the training pool of "
             f"the fixed {data['data']} split, labelled in order by a simulated annotator through the studio: a 3D box "
             f"per class, then corrective clicks (the CVPR 2025 rule) until the class's DSC reaches {target:.2f} or "
             f"{budget} clicks, then save. With adaptation, the studio's background fit ({data['steps']} steps, "
             "warm-started from the previous adapter, on every saved case) runs after each save and the next case "
             "is labelled with its adapter; without, every case is labelled by the zero-shot model. Clicks count "
             "every class of the case; \"not reached\": a class ended at the click budget below the target. Mean "
             "DSC: over the case's classes when the annotator stopped. Interaction seconds include encoding the "
             "case's slices at its first box.")
    out = [head, "", intro, "", conditions(name, data), "", "\n".join(lines), "", "; ".join(summary) + "."]
    if not any(r["reached"] for rows in modes.values() for r in rows):
        out += ["", f"No case reached DSC {target:.2f} in every class within {budget} clicks per class in either "
                "mode, so clicks per case stay at the budget and cannot show a saving; the DSC at the budget is "
                "what differs between the modes."]
    return "\n".join(out)


def benchmarks_md() -> str:
    hippo = load("fewshot_hippocampus.json")
    parts = [
        "# Benchmarks",
        "",
        "<!-- generated by bench/tables.py from bench/results/*.json; edit the script, not this file -->",
        "",
        "Every number here is rendered by `bench/tables.py` from the JSON that a script in `bench/` "
        "wrote to `bench/results/`; `tests/test_docs_tables.py` fails when this file differs from what "
        "the script generates. Each table states the conditions its JSON records (see "
        "`bench/provenance.py`); a field a file does not hold is shown as \"not recorded\". Timings are "
        "comparable only within one table.",
        "",
        selection_section(hippo),
        "",
        default_fit_section(),
        "",
        fewshot_section("fewshot-hippocampus", "Few-shot LiteMedSAM: hippocampus MRI", "fewshot_hippocampus.json",
                        f"`{FEWSHOT_COMMAND}`. Each fit is its own `medadapt fit` process, trained on k volumes "
                        "drawn with the seed and scored in 3D on the same held-out volumes (the first of the "
                        "fixed test set). Mean ± sd over seeds.\n\n" + FEWSHOT_KEY),
        "",
        fewshot_section("fewshot-prostate", "Few-shot LiteMedSAM: prostate MRI 2D", "fewshot_prostate.json",
                        "`bench/bench_fewshot.py --data ../shared/data/prostate_mri_2d --name prostate ...`: "
                        "the dataset's own 5-shot split; 2D PNGs, so distances are in pixels."),
        "",
        fewshot_section("fewshot-drive", "Few-shot LiteMedSAM: DRIVE retinal vessels", "fewshot_drive.json",
                        "`bench/bench_fewshot.py --data ../shared/data/drive/training --label-dir 1st_manual "
                        "--image-suffix _training --label-suffix _manual1 --name drive ...`: held-out images "
                        "of the fixed split; distances in pixels."),
        "",
        mirror_section(),
        "",
        *([zoom, ""] if (zoom := zoom_section()) else []),
        determinism_section(),
        "",
        inference_section(),
        "",
        deploy_section(),
        "",
        distill_section(),
        "",
        classification_section(),
        "",
        volumetric_section(),
        "",
        side_by_side_section(),
        "",
        nnunet_section(),
        "",
        best_section(),
        "",
        metrics_section(),
        "",
        interactive_accuracy_section(),
        "",
        interactive_latency_section(),
        "",
        decoder_graphs_section(),
        click_pipeline_section(),
        "",
        studio_loop_section(),
        "",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- README headlines

def _group_runs(data: dict | None, group: str) -> list[dict]:
    if data is None:
        return []
    return [r for k, r in data["runs"].items() if k.rsplit("/", 1)[0] == group and "error" not in r]


def _dsc(data: dict | None, group: str) -> str:
    return mean_sd([r["dsc"] for r in _group_runs(data, group)])


def headlines() -> list[tuple[str, str, str]]:
    """(what, result, anchor in docs/benchmarks.md): at most about a dozen."""
    rows = []
    hip, pro, drv = load("fewshot_hippocampus.json"), load("fewshot_prostate.json"), load("fewshot_drive.json")
    if hip:
        n = len(hip["test_cases"])
        zs = hip["runs"]["zero-shot/box"]["dsc"]
        cold = _group_runs(hip, "decoder+ov-cold/box/k5")
        rows.append((f"Hippocampus MRI, zero-shot LiteMedSAM with boxes, official preprocessing ({n} held-out "
                     "volumes)", f"DSC {zs:.3f}",
                     "fewshot-hippocampus"))
        if cold:
            fit_s = np.mean([r["fit_wall_seconds"] for r in cold])
            rows.append(("Hippocampus, `decoder` recipe from 5 volumes, boxes, `--encoder-engine openvino`, "
                         "empty embedding cache at start",
                         f"DSC {_dsc(hip, 'decoder+ov-cold/box/k5')}, fit {fit_s:.0f} s", "fewshot-hippocampus"))
        best = selected_recipe(hip)
        merged, _ = test20()
        t20 = "pending"
        if merged is not None:
            sel = [r["dsc"] for k, r in merged["runs"].items()
                   if k.startswith(f"{best['recipe']}/auto/k5/") and "error" not in r]
            seeds = f"{len(sel)} seed{'s' if len(sel) != 1 else ''}" + ("" if len(sel) >= 3 else " of 3")
            t20 = f"DSC {mean_sd(sel)} on {len(merged['test_cases'])} test volumes ({seeds})"
        rows.append((f"Hippocampus, no prompt, 5 volumes: recipe chosen on validation (`{best['recipe']}`)",
                     f"validation DSC {np.mean(best['val']):.3f}; test: {t20}", "selection"))
    if pro:
        rows.append((f"Prostate MRI 2D, zero-shot with boxes / `decoder-lora` from 5 images "
                     f"({len(pro['test_cases'])} held-out images)",
                     f"DSC {pro['runs']['zero-shot/box']['dsc']:.3f} / {_dsc(pro, 'decoder-lora/box/k5')}",
                     "fewshot-prostate"))
    if drv:
        rows.append((f"DRIVE vessels, zero-shot with boxes / `adapter` with no prompt from 5 images "
                     f"({len(drv['test_cases'])} held-out images)",
                     f"DSC {drv['runs']['zero-shot/box']['dsc']:.3f} / {_dsc(drv, 'adapter+fs2-400/auto/k5')}",
                     "fewshot-drive"))
    clicks, lat = load("interactive_hippocampus.json"), load("interactive_latency.json")
    if clicks:
        zs = clicks["runs"].get("zero-shot/box2d/w0.25")
        ads = [r for k, r in sorted(clicks["runs"].items())
               if re.fullmatch(r"decoder-box/k5/s\d+/box2d/w0\.25", k)]
        if zs and ads:
            def curve(rs: list[dict]) -> str:
                return (f"{mean_sd([r['dsc_per_interaction'][0] for r in rs])} → "
                        f"{mean_sd([r['dsc_per_interaction'][-1] for r in rs])}")

            def reach(rs: list[dict]) -> str:
                return f"{100 * np.mean([r['share_reaching_target'] for r in rs]):.0f}%"  # mean over seeds
            ms = {r["engine"]: r["ms_per_decoded_slice"] for r in (lat or {}).get("runs", [])}
            speed = (f"; {ms['torch']:.0f} ms (torch) / {ms['onnxruntime:int8']:.0f} ms (int8 ONNX decoder) per "
                     "re-decoded slice") if {"torch", "onnxruntime:int8"} <= set(ms) else ""
            pipe = next((r for r in (load("click_pipeline.json") or {}).get("runs", [])
                         if r["decoder_precision"] == "int8" and not r["decoder_spinning"]), None)
            if speed and pipe:  # the whole exported pipeline, as `simulate --engine onnxruntime` runs it
                speed += f" ({pipe['ms_per_decoded_slice']:.0f} ms through the whole exported pipeline)"
            seeds = f"{len(ads)} seeds, mean ± sd" if len(ads) > 1 else "seed 0"
            rows.append((f"Hippocampus, a 2D box per slice + {zs['clicks']} simulated clicks (CVPR 2025 protocol, "
                         f"{zs['objects']} objects): zero-shot / `decoder` from 5 volumes ({seeds})",
                         f"DSC {curve([zs])} / {curve(ads)}; objects reaching {zs['target']:.2f}: "
                         f"{reach([zs])} / {reach(ads)}{speed}",
                         "interactive-accuracy"))
    cls = load("classification.json")
    if cls:
        a = [r["auroc"] for r in cls["runs"] if r["method"] == "lora" and r["fraction"] == 0.1]
        rows.append(("PneumoniaMNIST, LiteMedSAM encoder + LoRA at 10 % of labels", f"AUROC {mean_sd(a, 3)}",
                     "classification"))
    vol = load("volumetric.json")
    if vol:
        def v(method: str, k: int) -> str:
            return mean_sd([r["dsc"] for r in vol["runs"].values()
                            if r["target"] == "both" and r["method"] == method and r["shots"] == k])
        rows.append(("3D U-Net, both hippocampus classes from 1 volume: pretrained + full fine-tuning / from scratch",
                     f"DSC {v('full', 1)} / {v('scratch', 1)}", "volumetric"))
    sbs = load("side_by_side.json")
    if sbs:
        r3 = next(r for k, r in sbs["rows"].items() if k.startswith("3D U-Net full k5"))
        rs = sbs["rows"].get("LiteMedSAM decoder, box (oracle) k5")
        rows.append((f"Same {sbs['n_test']} held-out volumes, 5 training volumes: 3D U-Net (no prompt) / "
                     "LiteMedSAM `decoder` (oracle boxes)",
                     f"DSC {mean_sd(r3['dsc'])} / {mean_sd(rs['dsc']) if rs else '–'}", "side-by-side"))
    best, nn = load("best_hippocampus.json"), load("nnunet_hippocampus.json")
    if best and nn:
        ours = [r for r in best["runs"].values() if r["shots"] == 5]
        theirs = [r for r in nn["runs"].values() if r["shots"] == 5]
        if ours and theirs:
            trainer = theirs[0]
            theirs = [r for r in theirs if r["trainer"] == trainer["trainer"]]  # one schedule per row
            budget = ", ".join(sorted({f"{r['budget_seconds'] / 60:g} min" for r in ours}))
            rows.append((f"Hippocampus, no prompt, 5 volumes ({len(best['test_cases'])} test volumes): `fit --method "
                         f"best` ({budget} budget) / nnU-Net v2 `{trainer['configuration']}`, {trainer['epochs']} "
                         f"epoch{'s' if trainer['epochs'] != 1 else ''} on the CPU",
                         f"DSC {mean_sd([r['dsc'] for r in ours])} / {mean_sd([r['dsc'] for r in theirs])}", "best"))
    inf = load("inference.json")
    if inf:
        s = inf["summary"]["medadapt OpenVINO mixed (cache)"]
        rows.append(("Whole volumes on a CPU, OpenVINO `--precision mixed` against the official path",
                     f"{s['speedup']:.2f}× faster, ΔDSC {s['dsc_diff']:+.4f}", "inference"))
    dis = load("distill.json")
    if dis:
        r = dis["results"].get("litemedsam_student_s, openvino bf16")
        if r:
            rows.append(("Distilled student encoder, OpenVINO bf16, one 256×256 slice",
                         f"{r['latency']['median_ms']:.0f} ms, ΔDSC {r['dsc_diff_vs_teacher_fp32']:+.4f} vs teacher",
                         "distill"))
    return rows


def readme_block() -> str:
    lines = ["| result | measured | full table |", "|---|---|---|"]
    for what, value, anchor in headlines():
        lines.append(f"| {what} | {value} | [table](docs/benchmarks.md#{anchor}) |")
    lines += ["", "Generated by `bench/tables.py` from `bench/results/*.json`; conditions (CPU, threads, load) "
              "are stated with each full table."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- recipes (docs/recipes.md)

def recipes_block() -> str:
    from medadapt.cli.recipes_cmd import recipe_rows

    lines = ["| recipe | what trains | trainable parameters on LiteMedSAM | share of the model | "
             "encoder frozen (embeddings cacheable) |", "|---|---|---|---|---|"]
    for r in recipe_rows():
        count = "–" if r["trainable"] is None else f"{r['trainable']:,}"
        share = "–" if r["trainable"] is None else f"{100 * r['trainable'] / r['total']:.2f} %"
        frozen = "–" if r["encoder_frozen"] is None else ("yes" if r["encoder_frozen"] else "no")
        lines.append(f"| `{r['name']}` | {r['description']} | {count} | {share} | {frozen} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files

def replace_block(text: str, name: str, content: str, path: Path) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{content}\n{end}", text, count=1)


def generated() -> dict[Path, str]:
    """Every generated file's expected content."""
    out = {BENCHMARKS_MD: benchmarks_md()}
    out[README] = replace_block(README.read_text(), "results", readme_block(), README)
    out[DEPLOY_MD] = replace_block(DEPLOY_MD.read_text(), "batching", batching_sentence(load("deploy.json")),
                                   DEPLOY_MD)
    out[RECIPES_MD] = replace_block(RECIPES_MD.read_text(), "recipes", recipes_block(), RECIPES_MD)
    return out


FIGURE = ROOT / "docs" / "img" / "hippocampus_dsc_vs_shots.png"
FIGURE_RECIPES = ("decoder", "decoder-lora", "lora+fs2", "bias+fs2", "adapter+fs2")


def figure() -> bytes | None:
    """The README figure: the report's DSC-against-k plot (``medadapt report`` on several runs draws the
    same), here over the box-mode hippocampus runs of fewshot_hippocampus.json."""
    from medadapt.report.figures import shots_curve

    data = load("fewshot_hippocampus.json")
    curves: dict[str, dict[int, list[float]]] = {}
    for group, runs in groups(data).items():
        method, prompt, k = group.split("/")
        if prompt == "box" and method in FIGURE_RECIPES:
            curves.setdefault(method, {})[int(k[1:])] = [r["dsc"] for _, r in runs]
    return shots_curve({m: curves[m] for m in FIGURE_RECIPES if m in curves})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file differs")
    ap.add_argument("--figure", action="store_true", help=f"also write {FIGURE.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    if args.figure:
        png = figure()
        if png:
            FIGURE.parent.mkdir(parents=True, exist_ok=True)
            FIGURE.write_bytes(png)
    stale = []
    for path, text in generated().items():
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{'differs' if args.check else 'wrote'}: {shown}")
    if args.check and stale:
        print("run: .venv/bin/python bench/tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
