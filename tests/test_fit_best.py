"""``fit --method best``: cross-validated choice among prompt-free recipes, on tiny synthetic volumes.

3D candidates run a 3-level U-Net with 4..16 filters on 16^3 crops for a few steps, one thread; the
SAM-family candidates (slow: LiteMedSAM encodes every slice) are exercised in the one slow test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medadapt.pipeline.best as best
from medadapt.cli.main import app
from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.infer.ensemble import EnsemblePredictor, VolumetricMember, labels_from_probabilities
from test_cli_volumetric import one_thread  # noqa: F401  (one thread for the whole module)

runner = CliRunner()
TINY = {"roi": "16,16,16", "filters": "4,8,16", "strides": "1,2,2", "fixed_crops": 2, "overlap": 0.5}
TINY_SET = [x for k, v in TINY.items() for x in ("--set", f"volumetric.{k}={v}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("best") / "ds", n_cases=9)


def _cli(data, out, *extra):
    return runner.invoke(app, ["fit", "--method", "best", "--data", str(data), "--out", str(out), "--no-progress",
                               "--max-steps", "3", *TINY_SET, *extra])


@dataclass(frozen=True)
class As2D(best.Candidate):
    """A 3D recipe standing in for a SAM-family (2D) candidate, so an ensemble can be scored fast."""

    @property
    def family(self) -> str:
        return "2d"


def _portfolio(monkeypatch, *, second_lr: float = 1e-9, second_2d: bool = False) -> None:
    """Two fast 3D candidates: the scratch recipe and a second one (a learning rate too small to learn)."""
    first = best.PORTFOLIO[0]
    second = replace(first, name="unet3d-pretrained", values={**first.values, "lr": second_lr}, needs_checkpoint=False)
    if second_2d:
        second = As2D(**{f: getattr(second, f) for f in second.__dataclass_fields__})
    monkeypatch.setattr(best, "PORTFOLIO", (first, second))


def test_cv_sees_only_training_cases_and_the_best_cv_candidate_is_fitted(data, tmp_path, monkeypatch):
    _portfolio(monkeypatch)
    fits: list[dict] = []
    real_fit = best._fit
    monkeypatch.setattr(best, "_fit", lambda c, v: (fits.append(json.loads(Path(v["split"]).read_text())),
                                                    real_fit(c, v))[1])
    out = tmp_path / "run"
    res = _cli(data, out, "--shots", "4", "--folds", "2", "--candidates",
               "unet3d-scratch,unet3d-pretrained,ensemble-2d3d")
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    split = json.loads((out / "split.json").read_text())
    test = set(split["test"])
    assert len(test) == 3 and len(split["train"]) == 4 and not test & set(sel["train_cases"])
    assert sel["test_cases_never_used"] == split["test"]
    assert sel["plan"]["spacing"] == "native"  # near-isotropic volumes keep the recipe's native grid
    # every fold fit trained and was scored on training cases only; the folds partition the training cases
    assert sorted(k for f in sel["fold_cases"] for k in f) == sorted(split["train"])
    cv_fits = fits[:-1]
    assert len(cv_fits) == 4  # 2 candidates x 2 folds, then the final fit
    for f in cv_fits:
        assert not (set(f["train"]) | set(f["test"])) & test and set(f["train"]) | set(f["test"]) == set(split["train"])
    assert fits[-1]["train"] == split["train"] and fits[-1]["val"] == []
    # the chosen candidate is the one with the best CV score, and it is the run's own fit
    recs = {r["name"]: r for r in sel["candidates"]}
    done = {n: r for n, r in recs.items() if r["status"].startswith("done")}
    assert set(done) == {"unet3d-scratch", "unet3d-pretrained"}
    assert all(len(r["fold_dsc"]) == 2 and r["cv_dsc"] == pytest.approx(np.mean(r["fold_dsc"])) for r in done.values())
    assert sel["chosen"] == max(done, key=lambda n: done[n]["cv_dsc"]) and recs[sel["chosen"]]["status"] == "done, chosen"
    assert recs["ensemble-2d3d"]["status"] == "skipped" and "2D" in recs["ensemble-2d3d"]["reason"]
    chosen_lr = best.PORTFOLIO[[c.name for c in best.PORTFOLIO].index(sel["chosen"])].values["lr"]
    assert json.loads((out / "fit_config.json").read_text())["lr"] == chosen_lr
    assert not (out / "cv").exists()  # fold runs are not kept

    # the run folder is a normal 3D run: predict, evaluate (its test cases) and report work on it
    res = runner.invoke(app, ["predict", "--adapter", str(out), "--input", str(data / "imagesTr"),
                              "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pred").iterdir())) == 9
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--adapter", str(out), "--out", str(out / "eval")])
    assert res.exit_code == 0, res.output
    rows = (out / "eval" / "per_case.csv").read_text().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == test
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    page = next(out.glob("report/*.html")).read_text()
    assert "Candidates (fit --method best)" in page and "unet3d-pretrained" in page


def test_ensemble_run_of_two_families_predicts_and_evaluates(data, tmp_path, monkeypatch):
    _portfolio(monkeypatch, second_lr=3e-3, second_2d=True)
    real = best._ensemble

    def ensemble_wins(*args):  # this test is about the ensemble run folder, not about which recipe wins
        s = real(*args)
        if s.record["status"] == "done":
            s.record["cv_dsc"] = 2.0
        return s

    monkeypatch.setattr(best, "_ensemble", ensemble_wins)
    out = tmp_path / "run"
    res = _cli(data, out, "--shots", "2", "--folds", "2", "--seed", "1")
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    assert sel["chosen"] == "ensemble-2d3d"
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["members"] == ["members/unet3d-pretrained", "members/unet3d-scratch"]  # best 2D, best 3D
    for m in ens["members"]:
        assert json.loads((out / m / "split.json").read_text())["train"] == sel["train_cases"]
    res = runner.invoke(app, ["predict", "--adapter", str(out), "--input", str(data / "imagesTr"),
                              "--out", str(tmp_path / "pred"), "--engine", "torch"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pred").iterdir())) == 9
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--adapter", str(out), "--out", str(out / "eval")])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["settings"]["adapter"] == str(out)
    assert {r.split(",")[0] for r in (out / "eval" / "per_case.csv").read_text().splitlines()[1:]} == \
        set(json.loads((out / "split.json").read_text())["test"])
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0


class _Sam:
    """A stand-in automatic-mode SAM predictor: fixed class logits, in the volume's axis order."""

    is_automatic, slice_axis, mirror, keep_largest, images_encoded, encoder_calls = True, None, False, [], 0, 0

    def __init__(self, classes):
        self.classes = classes


def test_cross_family_ensemble_averages_probabilities(monkeypatch):
    rng = np.random.default_rng(0)
    shape, classes = (4, 5, 3), [1, 2]
    sam_logits = rng.normal(0, 2, (2, *shape)).astype(np.float32)
    unet_prob = rng.uniform(0, 1, (2, *shape)).astype(np.float32)
    monkeypatch.setattr("medadapt.infer.ensemble.auto_volume_logits", lambda member, image, **kw: sam_logits)
    unet = object.__new__(VolumetricMember)
    unet.classes, unet.keep_largest = classes, []
    unet.probabilities = lambda volume: unet_prob
    ens = EnsemblePredictor([_Sam(classes), unet], ["sam", "unet"])
    assert ens.needs_volume and ens.member_axes(2) == [2, None]
    image = np.zeros(shape, np.float32)
    prob = ens.volume_probabilities(image, slice_axis=2, volume="the volume as read")
    by_hand = (1 / (1 + np.exp(-sam_logits)) + unet_prob) / 2
    np.testing.assert_allclose(prob, by_hand, rtol=1e-5, atol=1e-6)
    labels = ens.segment_volume_auto(image, slice_axis=2, volume="the volume as read")
    expect = np.where(by_hand.max(0) > 0.5, np.array(classes)[by_hand.argmax(0)], 0)
    assert np.array_equal(labels, expect) and np.array_equal(labels_from_probabilities(by_hand, classes), expect)
    with pytest.raises(Exception, match="needs the volume file"):
        ens.volume_probabilities(image, slice_axis=2)


@pytest.mark.parametrize("extra,needle", [
    (["--shots", "4", "--budget", "1s"], "too small for even one candidate"),
    (["--shots", "4", "--folds", "5"], "--folds 5 needs at least 5 training cases (one per fold); there are 4"),
    (["--shots", "4", "--folds", "1"], "needs at least 2 folds"),
    (["--shots", "1", "--folds", "2"], "--folds 2 needs at least 2 training cases"),
    (["--shots", "4", "--set", "roi=16"], "name the family or candidate"),
    (["--shots", "4", "--candidates", "nnunet"], "unknown candidate"),
    (["--shots", "4", "--budget", "soon"], "is not a duration"),
    (["--shots", "4", "--lr", "1e-3"], "--lr: not options of --method best"),
])
def test_bad_input_exits_2_and_leaves_no_run_folder(data, tmp_path, extra, needle):
    out = tmp_path / "run"
    res = runner.invoke(app, ["fit", "--method", "best", "--data", str(data), "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()), res.output
    assert not out.exists()


def test_an_existing_run_folder_is_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")
    res = runner.invoke(app, ["fit", "--method", "best", "--data", str(data), "--out", str(out), "--shots", "4"])
    assert res.exit_code == 2 and "not an empty folder" in " ".join(res.output.split()), res.output
    assert [p.name for p in out.iterdir()] == ["result.json"]  # left as it was


def test_budget_error_names_the_minimum(data, tmp_path):
    res = runner.invoke(app, ["fit", "--method", "best", "--data", str(data), "--out", str(tmp_path / "r"),
                              "--shots", "4", "--budget", "10s", "--candidates", "unet3d-scratch"])
    text = " ".join(res.output.split())
    minimum = best.PORTFOLIO[0].nominal_fit_seconds() * 5  # 4 folds + the final fit
    assert res.exit_code == 2 and f"needs about {best._duration(minimum)}" in text, text
    assert f"--budget {best._duration(minimum)} or more" in text


def test_k1_fits_the_documented_fixed_choice(data, tmp_path):
    out = tmp_path / "run"
    res = _cli(data, out, "--shots", "1")
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    assert sel["folds"] == 0 and sel["chosen"] == best.K1_CHOICE[1] and "no cross-validation" in sel["rule"]
    recs = {r["name"]: r for r in sel["candidates"]}
    assert recs["unet3d-scratch"]["status"] == "chosen without CV"
    assert "k = 1" in recs["sam-decoder-auto"]["reason"]
    assert len(json.loads((out / "split.json").read_text())["train"]) == 1


def test_candidate_that_cannot_finish_is_skipped_after_its_first_fold(data, tmp_path, monkeypatch):
    """Each fit takes 1000 s more on a fake clock: the second candidate's first fold shows it cannot finish."""
    _portfolio(monkeypatch, second_lr=3e-3)
    offset = [0.0]
    real_clock, real_fit = best.time.perf_counter, best._fit

    class Clock:
        @staticmethod
        def perf_counter():
            return real_clock() + offset[0]

    def slow_fit(c, v):
        offset[0] += 1000
        return real_fit(c, v)

    monkeypatch.setattr(best, "time", Clock)
    monkeypatch.setattr(best, "_fit", slow_fit)
    out = tmp_path / "run"
    res = _cli(data, out, "--shots", "2", "--folds", "2", "--budget", "3500s")
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    first, second = sel["candidates"][:2]
    assert first["status"] == "done, chosen" and len(first["fold_dsc"]) == 2
    assert second["status"] == "skipped" and "estimated from its first fold" in second["reason"]
    assert len(second["fold_dsc"]) == 1 and second["cv_dsc"] is None
    assert sel["chosen"] == first["name"] and sel["over_budget_seconds"] > 0
    # the run's note tells the user which candidate the budget kept out
    note = json.loads((out / "result.json").read_text())["selection"]["note"]
    assert f"not tried within the budget: {second['name']}" in note and "larger --budget" in note


def test_parse_budget():
    assert best.parse_budget("90s") == 90 and best.parse_budget("30m") == 1800
    assert best.parse_budget("1h30m") == 5400 and best.parse_budget("45") == 45


@pytest.mark.slow
def test_sam_and_3d_candidates_and_their_ensemble(data, tmp_path):
    """The real portfolio on synthetic volumes: a SAM decoder and a 3D U-Net, and their ensemble, all scored."""
    out = tmp_path / "run"
    torch.set_num_threads(1)
    res = _cli(data, out, "--shots", "2", "--folds", "2", "--candidates",
               "unet3d-scratch,sam-decoder-auto,ensemble-2d3d", "--set", "segment.batch_size=2", "--budget", "3h")
    assert res.exit_code == 0, res.output
    recs = {r["name"]: r for r in json.loads((out / "selection.json").read_text())["candidates"]}
    assert all(recs[n]["status"].startswith("done") for n in ("unet3d-scratch", "sam-decoder-auto", "ensemble-2d3d"))
    assert recs["ensemble-2d3d"]["members"] == ["sam-decoder-auto", "unet3d-scratch"]
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--adapter", str(out), "--out", str(out / "eval")])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def images_2d(tmp_path_factory):
    """Paired 2D folders (images/ + masks/): a bright disc on a noisy background, one per image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("best2d") / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(9):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 14)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = np.clip(rng.normal(60, 10, (64, 64)) + 120 * disc, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"c{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"c{i}.png")
    return root


def test_2d_images_choose_among_the_sam_family_candidates(images_2d, tmp_path):
    """2D images: the 3D candidates are recorded as not applicable, the SAM-family one is cross-validated
    on the training images and fitted; the run is a normal segment run that evaluate scores."""
    out = tmp_path / "best2d"
    res = runner.invoke(app, ["fit", "--method", "best", "--data", str(images_2d), "--out", str(out), "--no-progress",
                              "--shots", "2", "--max-steps", "2", "--budget", "2h",
                              "--candidates", "unet3d-scratch,sam-decoder-auto,ensemble-2d3d"])
    assert res.exit_code == 0, res.output
    sel = json.loads((out / "selection.json").read_text())
    recs = {r["name"]: r for r in sel["candidates"]}
    assert sel["chosen"] == "sam-decoder-auto" and sel["folds"] == 2
    assert recs["unet3d-scratch"]["status"] == "skipped" and recs["unet3d-scratch"]["reason"] == best.NOT_FOR_2D
    assert recs["ensemble-2d3d"]["status"] == "skipped"
    assert len(recs["sam-decoder-auto"]["fold_dsc"]) == 2 and 0 <= recs["sam-decoder-auto"]["cv_dsc"] <= 1
    split = json.loads((out / "split.json").read_text())
    assert not set(sum(sel["fold_cases"], [])) & set(split["test"])  # CV on training images only
    res = runner.invoke(app, ["evaluate", "--data", str(images_2d), "--adapter", str(out), "--out", str(tmp_path / "ev"),
                              "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "per_case.csv").is_file()
    # only 3D candidates named: refused before anything is written
    res = runner.invoke(app, ["fit", "--method", "best", "--data", str(images_2d), "--out", str(tmp_path / "no"),
                              "--shots", "2", "--candidates", "unet3d-scratch"])
    assert res.exit_code == 2 and "2D images" in " ".join(res.output.split()) and not (tmp_path / "no").exists()


def test_plan_spacing_resamples_only_anisotropic_volumes(tmp_path, data):
    """Thick-slice volumes acquired along different axes get one isotropic grid (the volumes' geometric-mean
    spacing); near-isotropic ones keep their native spacing, as the recipe was chosen with."""
    import nibabel as nib

    from medadapt.data.datasets import load_segmentation_dataset

    root = tmp_path / "thick"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(4):
        # two volumes with the 8 mm axis along RAS x, two along RAS y (as in the cardiac MRI set)
        zooms = (8.0, 1.25, 1.25) if i % 2 else (1.25, 8.0, 1.25)
        affine = np.diag([*zooms, 1.0])
        arr = np.zeros((6, 6, 6), np.float32)
        nib.save(nib.Nifti1Image(arr, affine), root / "imagesTr" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), root / "labelsTr" / f"v{i}.nii.gz")
        training.append({"image": f"./imagesTr/v{i}.nii.gz", "label": f"./labelsTr/v{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "Thick", "modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "a"}, "training": training}))
    thick = load_segmentation_dataset(str(root))
    plan = best.plan_spacing(thick, [c.key for c in thick.cases])
    iso = round(float((1.25 * 1.25 * 8.0) ** (1 / 3)), 3)  # every volume's own geometric mean
    assert plan["spacing"] == f"{iso},{iso},{iso}" and plan["anisotropy"] > best.ANISOTROPY
    synthetic = load_segmentation_dataset(str(data))
    assert best.plan_spacing(synthetic, [c.key for c in synthetic.cases])["spacing"] == "native"
