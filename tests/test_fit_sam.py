"""`medadapt fit` on real data: adaptation beats zero-shot on held-out volumes, runs resume, adapters are small.

Embeddings of the frozen LiteMedSAM encoder go to one on-disk cache for the whole session, so
every test after the first pays only for the mask decoder.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medadapt.data.datasets import load_segmentation_dataset
from medadapt.data.fewshot import Split, save_split
from medadapt.data.slices import iter_slices
from medadapt.engine.sam_fit import FitOptions, run_fit
from medadapt.evaluate.segment_run import evaluate_dataset
from medadapt.infer.factory import PredictorSpec, build_predictor, load_predictor

TRAIN = ("hippocampus_001",)
TEST = ("hippocampus_097", "hippocampus_096")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def hippo(data_dir: Path, tmp_path_factory) -> tuple[str, Path]:
    spec = str(data_dir / "hippocampus")
    ds = load_segmentation_dataset(spec)
    keys = set(ds.keys())
    test = tuple(k for k in TEST if k in keys)
    assert len(test) == 2, "expected hippocampus_096/097 in ../shared"
    split_file = tmp_path_factory.mktemp("split") / "split.json"
    save_split(split_file, Split(TRAIN, (), test, {}))
    return spec, split_file


def _fit(tmp: Path, spec: str, split: Path, cache: Path, *, resume: bool = False, **kw):
    opts = FitOptions(data=spec, out=str(tmp), split=str(split), cache_dir=str(cache), progress=False,
                      val_every=None, **kw)
    return run_fit(opts, resume=resume)


def _mean_dsc(predictor, spec: str, keys, mode="box") -> float:
    rows, _ = evaluate_dataset(predictor, load_segmentation_dataset(spec), list(keys), mode=mode)
    return float(np.mean([r["dsc"] for r in rows]))


def test_decoder_fit_beats_zero_shot(hippo, tmp_path: Path, cache_dir: Path):
    spec, split = hippo
    run = tmp_path / "run"
    result = _fit(run, spec, split, cache_dir, method="decoder", prompt="box", max_steps=40, lr=1e-4)
    assert result["train_cases"] == list(TRAIN) and not result["encoder_trainable"]
    assert result["embedding_cache"]["misses"] > 0
    assert result["torch_threads"] == torch.get_num_threads() and result["torch_version"] == torch.__version__
    zero = _mean_dsc(build_predictor("litemedsam", cache_dir=cache_dir), spec, TEST)
    adapted = _mean_dsc(build_predictor(None, adapter=run, cache_dir=cache_dir), spec, TEST)
    print(f"held-out DSC zero-shot {zero:.4f} -> adapted {adapted:.4f}")
    assert adapted > zero + 0.02, (zero, adapted)


def test_adapter_is_small_and_reloads_to_same_predictions(hippo, tmp_path: Path, cache_dir: Path):
    spec, split = hippo
    run = tmp_path / "run"
    result = _fit(run, spec, split, cache_dir, method="decoder-lora", prompt="box", max_steps=8, lr=1e-3)
    size = (run / "adapter" / "adapter.safetensors").stat().st_size
    assert size == result["adapter_bytes"] and size < 200_000  # LiteMedSAM itself is ~39 MB
    tensors = load_file(str(run / "adapter" / "adapter.safetensors"))
    assert tensors and all("lora" in k for k in tensors)
    ds = load_segmentation_dataset(spec)
    image, label, _, axis = ds.load(TEST[0])
    from medadapt.infer.loaded import predict_loaded

    # decoder-lora leaves the encoder as it is, so all three share the cached embeddings.
    a = predict_loaded(build_predictor(None, adapter=run, cache_dir=cache_dir), image, label, axis, "box")
    b = predict_loaded(build_predictor(None, adapter=run / "adapter", cache_dir=cache_dir), image, label, axis, "box")
    np.testing.assert_array_equal(a, b)
    z = predict_loaded(build_predictor("litemedsam", cache_dir=cache_dir), image, label, axis, "box")
    assert (a != z).any()  # the adapter changes predictions


def test_encoder_lora_trains_from_cached_stem_outputs(hippo, tmp_path: Path, cache_dir: Path):
    """lora with frozen_stages=2: stage 0-1 outputs are computed once per slice and cached, LoRA in
    stages 2-3 trains through the trunk only; the saved adapter runs unchanged in a full forward."""
    from medadapt.infer.factory import load_adapted_model
    from medadapt.models.preprocess import preprocess_image

    spec, split = hippo
    run = tmp_path / "run"
    result = _fit(run, spec, split, cache_dir, method="lora", prompt="box", max_steps=14, batch_size=2, lr=1e-3,
                  frozen_stages=2, precision="bf16")
    assert result["encoder_trainable"] and result["embedding_cache"] is None
    stats = result["stem_cache"]
    assert stats["misses"] == result["train_slices"] and stats["hits"] > 0  # 25 slices: the 14th step reuses
    net, _, meta = load_adapted_model(run)
    assert meta["recipe"]["frozen_stages"] == 2
    names = {k for k in load_file(str(run / "adapter" / "adapter.safetensors"))}
    assert names and not [n for n in names if n.startswith(("image_encoder.layers.0.", "image_encoder.layers.1."))]
    assert any(n.startswith("image_encoder.layers.3.") for n in names)
    image, _, _, axis = load_segmentation_dataset(spec).load(TEST[0])
    from medadapt.models.registry import get_sam_spec

    x = preprocess_image(np.take(image, image.shape[axis] // 2, axis=axis), get_sam_spec("litemedsam"))[0][None]
    enc = net.image_encoder
    with torch.no_grad():
        full = enc(x)
        cached = enc.forward_trunk(enc.forward_stem(x, 2).half().float(), 2)  # the cache stores float16
        base = build_predictor("litemedsam").model.image_encoder(x)
    assert float((full - cached).norm() / full.norm()) < 1e-3
    assert float((full - base).norm() / full.norm()) > 1e-4  # the encoder LoRA was trained
    # Scoring: the predictor caches the stem too and runs only the trunk; masks as with a full forward.
    from medadapt.infer.loaded import predict_loaded

    image, label, _, axis = load_segmentation_dataset(spec).load(TEST[0])
    mid = range(image.shape[axis] // 2 - 3, image.shape[axis] // 2 + 3)  # six slices keep the test short
    image, label = np.take(image, mid, axis=axis), np.take(label, mid, axis=axis)
    cached_pred = build_predictor(None, adapter=run, cache_dir=cache_dir)
    a = predict_loaded(cached_pred, image, label, axis, "box")
    assert cached_pred.stem_cache is not None and cached_pred.stem_cache.misses > 0
    b = predict_loaded(build_predictor(None, adapter=run), image, label, axis, "box")
    assert (a != b).mean() < 1e-3 and (a > 0).any()



def test_augment_stem_trains_on_augmented_slices_outside_the_stem_cache(hippo, tmp_path: Path, cache_dir: Path):
    """augment_stem with frozen_stages=2: training slices are augmented, so the stem runs on each of them
    and nothing of training goes through the stem cache; the same fit without it reads the cache and
    learns something else."""
    spec, split = hippo
    common = dict(method="bias", prompt="auto", max_steps=3, batch_size=2, lr=1e-3, frozen_stages=2,
                  precision="bf16")
    aug = _fit(tmp_path / "aug", spec, split, cache_dir, augment_stem=True, augment_flips=False,
               augment_translate=0.1, **common)
    assert aug["stem_cache"]["hits"] + aug["stem_cache"]["misses"] == 0
    plain = _fit(tmp_path / "plain", spec, split, cache_dir, **common)
    assert plain["stem_cache"]["hits"] + plain["stem_cache"]["misses"] == 6  # 3 steps x 2 slices
    a = load_file(str(tmp_path / "aug" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "plain" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)

def test_bad_recipe_options_exit_2_without_a_run_folder(hippo, tmp_path: Path):
    from typer.testing import CliRunner

    from medadapt.cli.main import app

    spec, split = hippo
    for extra, message in ((["--frozen-stages", "9"], "frozen_stages=9, but the encoder has 4 stages"),
                           (["--set", "bogus=1"], "invalid fit option 'bogus'"),
                           (["--frozen-stages", "2", "--set", "lora_blocks=0,5"], "layers.1.blocks.0.attn.qkv lies in"),
                           (["--set", "lora_blocks=a"], "invalid fit option 'lora_blocks.0'"),
                           (["--lr", "1e-3", "--set", "lr=1e-4"], "lr given both as --lr and with --set"),
                           (["--slice-axis", "3"], "invalid fit option 'slice_axis'"),
                           (["--set", "augment_stem=true"], "augment_stem applies to recipes that train the encoder after frozen stages"),
                           (["--set", "augment_translate=0.9"], "invalid fit option 'augment_translate'")):
        res = CliRunner().invoke(app, ["fit", "--data", spec, "--split", str(split), "--out", str(tmp_path / "run"),
                                       "--method", "lora", "--no-progress", *extra])
        assert res.exit_code == 2, res.output
        assert message in " ".join(res.output.split()), res.output
        assert not (tmp_path / "run").exists()


def test_killed_run_resumes_to_the_same_adapter(hippo, tmp_path: Path, cache_dir: Path):
    """SIGKILL a real `medadapt fit` process after its first checkpoint, resume it, and compare with
    an uninterrupted run: the finished epochs are kept and the final adapter is the same."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec, split = hippo
    args = ["--data", spec, "--split", str(split), "--cache-dir", str(cache_dir), "--method", "decoder-lora",
            "--prompt", "box", "--lr", "1e-3", "--batch-size", "2", "--max-steps", "30", "--no-progress"]
    cmd = [sys.executable, "-m", "medadapt.cli.main", "fit"]
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run([*cmd, *args, "--out", str(full)], check=True, capture_output=True)

    proc = subprocess.Popen([*cmd, *args, "--out", str(part)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = part / "checkpoint" / "last.pt"
    deadline = time.time() + 900
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (part / "result.json").exists()
    subprocess.run([*cmd, *args, "--out", str(part), "--resume"], check=True, capture_output=True)
    a = load_file(str(full / "adapter" / "adapter.safetensors"))
    b = load_file(str(part / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_existing_run_needs_resume(hippo, tmp_path: Path, cache_dir: Path):
    from medadapt.errors import MedadaptError

    spec, split = hippo
    _fit(tmp_path, spec, split, cache_dir, method="decoder-lora", prompt="box", max_steps=2)
    with pytest.raises(MedadaptError, match="resume"):
        _fit(tmp_path, spec, split, cache_dir, method="decoder-lora", prompt="box", max_steps=2)


def test_chosen_slice_axis_is_trained_and_applied_along_it(hippo, tmp_path: Path, cache_dir: Path):
    """`fit --slice-axis 0` trains on sagittal slices of the axially-sliced-by-default hippocampus volumes;
    the adapter records the axis, so evaluate and predict cut volumes the same way without being told."""
    spec, split = hippo
    ds = load_segmentation_dataset(spec)
    image, label, _, default_axis = ds.load(TRAIN[0])
    assert default_axis == 2
    run = tmp_path / "run"
    result = _fit(run, spec, split, cache_dir, method="decoder", prompt="box", max_steps=2, slice_axis=0)
    sagittal = len(list(iter_slices(ds, TRAIN, axis=0)))
    assert result["train_slices"] == sagittal != len(list(iter_slices(ds, TRAIN)))
    assert json.loads((run / "adapter" / "adapter.json").read_text())["extra"]["slice_axis"] == 0
    predictor = build_predictor(None, adapter=run, cache_dir=cache_dir)
    assert predictor.slice_axis == 0
    from medadapt.infer.loaded import predict_loaded
    from medadapt.infer.volume import segment_volume_from_labels

    along_0 = segment_volume_from_labels(predictor, image, label, slice_axis=0)
    assert not np.array_equal(along_0, segment_volume_from_labels(predictor, image, label, slice_axis=2))
    assert np.array_equal(predict_loaded(predictor, image, label, default_axis, "box"), along_0)
    from typer.testing import CliRunner

    from medadapt.cli.main import app
    from medadapt.io.volumes import read_volume

    case = ds.case(TRAIN[0])
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--adapter", str(run), "--input", str(case.image), "--labels",
                                   str(case.label), "--out", str(tmp_path / "pred"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_volume(tmp_path / "pred" / case.image.name).array, along_0)


@pytest.fixture(scope="module")
def auto_run(hippo, cache_dir: Path, tmp_path_factory) -> tuple[Path, dict]:
    """One automatic-mode (no prompt) fit shared by the tests below."""
    spec, split = hippo
    run = tmp_path_factory.mktemp("auto") / "run"
    return run, _fit(run, spec, split, cache_dir, method="decoder", prompt="auto", max_steps=30, lr=3e-4)


def test_auto_mode_segments_without_prompts(hippo, auto_run, tmp_path: Path, cache_dir: Path):
    spec, _ = hippo
    run, result = auto_run
    assert result["classes"] == [1, 2]
    ds = load_segmentation_dataset(spec)
    labelled = len(list(iter_slices(ds, TRAIN)))
    # auto inference sees every slice, so training sees empty ones too (default: half as many)
    assert labelled < result["train_slices"] <= labelled + round(0.5 * labelled)
    predictor = build_predictor(None, adapter=run, cache_dir=cache_dir)
    assert predictor.is_automatic
    image, label, _, axis = ds.load(TRAIN[0])
    from medadapt.infer.volume import segment_volume_auto

    seg = segment_volume_auto(predictor, image, slice_axis=axis)
    assert seg.shape == label.shape and set(np.unique(seg)) <= {0, 1, 2}
    # Learned from the training volume itself: it must find the structures there.
    fg = (seg > 0) & (label > 0)
    assert 2 * fg.sum() / ((seg > 0).sum() + (label > 0).sum()) > 0.3
    # `medadapt predict` needs no prompt and no label for such an adapter (the default source is auto).
    from typer.testing import CliRunner

    from medadapt.cli.main import app
    from medadapt.io.volumes import read_volume

    image_file = ds.case(TRAIN[0]).image
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--adapter", str(run), "--input", str(image_file),
                                   "--out", str(tmp_path / "pred"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_volume(tmp_path / "pred" / image_file.name).array, seg)
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--prompts", "auto", "--input", str(image_file),
                                   "--out", str(tmp_path / "pred0")])
    assert res.exit_code == 2 and "needs an automatic-mode adapter" in " ".join(res.output.split()), res.output


def test_auto_mode_mirroring_is_mirror_equivariant(hippo, auto_run, tmp_path: Path, cache_dir: Path):
    """--mirror averages each slice's class logits with those of its mirror image, mirrored back:
    the result for a mirrored volume is exactly the mirrored result (it fails if the flip is not undone)."""
    spec, _ = hippo
    run, _ = auto_run
    ds = load_segmentation_dataset(spec)
    image, _, _, axis = ds.load(TRAIN[0])  # the fit's own volume: its structures are found there
    from medadapt.infer.volume import segment_volume_auto

    predictor = build_predictor(None, adapter=run, cache_dir=cache_dir)
    plain = segment_volume_auto(predictor, image, slice_axis=axis)
    predictor.mirror = True
    width = max(a for a in range(image.ndim) if a != axis)  # the slice's last axis
    mirrored = segment_volume_auto(predictor, image, slice_axis=axis)
    of_flipped = segment_volume_auto(predictor, np.flip(image, width).copy(), slice_axis=axis)
    assert np.array_equal(np.flip(of_flipped, width), mirrored)
    assert not np.array_equal(plain, mirrored)  # the mirror image's logits were used
    from typer.testing import CliRunner

    from medadapt.cli.main import app
    from medadapt.io.volumes import read_volume

    image_file = ds.case(TRAIN[0]).image
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--adapter", str(run), "--mirror", "--input", str(image_file),
                                   "--out", str(tmp_path / "pred"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_volume(tmp_path / "pred" / image_file.name).array, mirrored)
    # Box prompts are not mirrored: a clear error before anything is written.
    label_file = ds.case(TRAIN[0]).label
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--mirror", "--input", str(image_file), "--labels", str(label_file),
                                   "--out", str(tmp_path / "pred_box")])
    assert res.exit_code == 2 and "--mirror applies to automatic mode" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "pred_box").exists()
    res = CliRunner().invoke(app, ["evaluate", "--mirror", "--pred", str(tmp_path / "pred"), "--gt", str(label_file),
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "--mirror segments images" in " ".join(res.output.split()), res.output


def _with_extra(run: Path, dest: Path, **extra) -> Path:
    """A copy of ``run``'s adapter with ``extra`` changed in its adapter.json (e.g. a trained slice axis)."""
    shutil.copytree(run / "adapter", dest / "adapter")
    meta_file = dest / "adapter" / "adapter.json"
    meta = json.loads(meta_file.read_text())
    meta["extra"] = {**meta["extra"], **extra}
    meta_file.write_text(json.dumps(meta))
    return dest


def test_auto_volume_logits_line_up_with_the_volume(hippo, auto_run, cache_dir: Path):
    """Class logits cut along any axis come back in the volume's axis order: their labels are the
    automatic-mode segmentation along that axis."""
    from medadapt.infer.predictor import class_labels
    from medadapt.infer.volume import auto_volume_logits, segment_volume_auto

    spec, _ = hippo
    run, _ = auto_run
    image, _, _, _ = load_segmentation_dataset(spec).load(TRAIN[0])
    predictor = load_predictor(PredictorSpec(adapters=(run,), cache_dir=cache_dir, keep_largest=()))
    for axis in (2, 0):
        logits = auto_volume_logits(predictor, image, slice_axis=axis)
        assert logits.shape == (2, *image.shape) and logits.dtype == np.float32
        assert np.array_equal(class_labels(logits, predictor.classes),
                              segment_volume_auto(predictor, image, slice_axis=axis))


def test_ensemble_averages_members_along_their_own_axes(hippo, auto_run, tmp_path: Path, cache_dir: Path):
    """`--adapter A --adapter B`: each member cuts the volume along its trained axis, the labels come from
    the mean class probabilities; predict and evaluate use it, prompted modes are refused with exit 2."""
    from typer.testing import CliRunner

    from medadapt.cli.main import app
    from medadapt.errors import MedadaptError
    from medadapt.infer.ensemble import EnsemblePredictor, labels_from_probabilities
    from medadapt.infer.predictor import keep_largest_of
    from medadapt.infer.volume import auto_volume_logits, segment_volume_auto
    from medadapt.io.volumes import read_volume

    spec, split = hippo
    run, _ = auto_run
    sagittal = _with_extra(run, tmp_path / "sagittal", slice_axis=0, keep_largest=[2])
    ds = load_segmentation_dataset(spec)
    image, _, _, axis = ds.load(TRAIN[0])
    ensemble = build_predictor(None, adapter=[run, sagittal], cache_dir=cache_dir)
    assert isinstance(ensemble, EnsemblePredictor) and ensemble.member_axes(axis) == [axis, 0]
    assert ensemble.resize == "official"  # adapted members keep the preprocessing fit trained with
    axial, sag = ensemble.members
    assert ensemble.keep_largest == sorted(set(axial.keep_largest) & {2})  # only what every member chose
    def prob(logits):
        return 1 / (1 + np.exp(-logits))

    mean = (prob(auto_volume_logits(axial, image, slice_axis=axis)) + prob(auto_volume_logits(sag, image, slice_axis=0))) / 2
    seg = ensemble.segment_volume_auto(image, slice_axis=axis)
    assert np.array_equal(seg, keep_largest_of(labels_from_probabilities(mean, ensemble.classes), ensemble.keep_largest))
    assert not np.array_equal(seg, segment_volume_auto(axial, image, slice_axis=axis))
    # An ensemble of one run with itself is that run.
    twice = build_predictor(None, adapter=[run, run], cache_dir=cache_dir)
    assert np.array_equal(twice.segment_volume_auto(image, slice_axis=axis),
                          segment_volume_auto(axial, image, slice_axis=axis))

    case = ds.case(TRAIN[0])
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--adapter", str(run), "--adapter", str(sagittal), "--input",
                                   str(case.image), "--out", str(tmp_path / "pred"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_volume(tmp_path / "pred" / case.image.name).array, seg)
    res = CliRunner().invoke(app, ["predict", "--engine", "torch", "--adapter", str(run), "--adapter", str(sagittal), "--prompts",
                                   "boxes-from-labels", "--labels", str(case.label), "--input", str(case.image),
                                   "--out", str(tmp_path / "pred_box")])
    assert res.exit_code == 2 and "an ensemble" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "pred_box").exists()
    # A prompted (box) run cannot join: it has no class logits to average.
    with pytest.raises(MedadaptError, match="expects box or point prompts"):
        build_predictor(None, adapter=[run, _with_extra(run, tmp_path / "box", prompt="box")])

    # evaluate: the training case of the runs' split is not scored, the held-out one is.
    eval_split = tmp_path / "eval_split.json"
    save_split(eval_split, Split((), (), (TRAIN[0], TEST[0]), {}))
    assert (run / "split.json").is_file()  # the fit's split: TRAIN[0] trained on
    res = CliRunner().invoke(app, ["evaluate", "--data", spec, "--adapter", str(run), "--adapter", str(sagittal),
                                   "--split", str(eval_split), "--out", str(tmp_path / "ev"), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    assert f"not scored: {TRAIN[0]}" in " ".join(res.output.split())
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["settings"]["ensemble"] == [str(run), str(sagittal)] and summary["settings"]["prompt"] == "auto"
    assert {r["case"] for r in _csv_rows(tmp_path / "ev" / "per_case.csv")} == {TEST[0]}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_frozen_encoder_on_another_engine_fills_the_cache(hippo, tmp_path: Path, monkeypatch):
    """`--encoder-engine onnxruntime`: the base model is exported once and its fp32 embeddings, equal to
    PyTorch's within float32 rounding, fill the cache under their own key."""
    from medadapt.deploy.backend import frozen_encoder

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "medadapt-cache"))
    spec, split = hippo
    opts = FitOptions(data=spec, out=str(tmp_path / "run"), split=str(split), cache_dir=str(tmp_path / "emb"),
                      progress=False, val_every=None, method="decoder", max_steps=2, encoder_engine="onnxruntime")
    tag, encode = frozen_encoder(opts)
    assert tag.startswith("onnxruntime:fp32:")
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        ref = build_predictor("litemedsam").model.encode(x)
    torch.testing.assert_close(encode(x), ref, rtol=0, atol=1e-3 * float(ref.abs().max()))
    result = run_fit(opts, frozen_encoder=frozen_encoder)
    assert result["encoder_engine"] == tag
    # The cache started empty: every slice the two steps drew was encoded by the exported graph.
    assert 0 < result["embedding_cache"]["misses"] <= opts.max_steps * opts.batch_size
    assert (tmp_path / "run" / "adapter" / "adapter.safetensors").is_file()


def test_other_encoder_engine_needs_the_factory(hippo, tmp_path: Path):
    from medadapt.errors import MedadaptError

    spec, split = hippo
    with pytest.raises(MedadaptError, match="frozen-encoder factory"):
        _fit(tmp_path / "run", spec, split, tmp_path / "emb", method="decoder", max_steps=1, encoder_engine="openvino")


def test_auto_mode_class_tokens_get_their_own_learning_rate():
    """Prompt tuning needs a larger step than the decoder weights: the class tokens form their own
    optimiser group at ``class_token_lr_scale`` x lr, without weight decay."""
    from medadapt.adapt.class_prompts import attach_class_prompts
    from medadapt.adapt.recipes import RecipeConfig, apply_recipe
    from medadapt.engine.config import TrainConfig
    from medadapt.engine.optim import build_optimizer
    from medadapt.engine.sam_task import SamSegmentationTask, SamTaskSettings
    from medadapt.models.registry import build_model, get_sam_spec

    model = build_model("litemedsam", pretrained=False)
    attach_class_prompts(model, 2)
    recipe = RecipeConfig(name="decoder", also_train=["class_prompts"])
    applied = apply_recipe(model, recipe)
    settings = SamTaskSettings(prompt="auto", classes=[1, 2], class_token_lr_scale=7.0)
    task = SamSegmentationTask(model, get_sam_spec("litemedsam"), recipe, applied.encoder_trainable, [], [], settings)
    opt = build_optimizer(TrainConfig(lr=1e-4, weight_decay=0.05), task.parameters_to_train())
    tokens = [g for g in opt.param_groups if any(p is model.class_prompts.tokens for p in g["params"])]
    assert len(tokens) == 1 and tokens[0]["lr"] == pytest.approx(7e-4) and tokens[0]["weight_decay"] == 0
    others = [g for g in opt.param_groups if g is not tokens[0]]
    assert all(g["lr"] == pytest.approx(1e-4) for g in others)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == applied.trainable
