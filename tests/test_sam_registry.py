"""Model registry: names, specs, and building with or without weights."""

from __future__ import annotations

import pytest
import torch

from medadapt.errors import MedadaptError
from medadapt.io.checkpoints import read_checkpoint
from medadapt.models.registry import DEFAULT_MODEL, build_model, get_sam_spec, list_models
from medadapt.models.weights import litemedsam_checkpoint_path


def test_specs():
    names = [s.name for s in list_models()]
    assert names[0] == DEFAULT_MODEL == "litemedsam"
    assert set(names) == {"litemedsam", "medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam",
                          "litemedsam_student_s", "litemedsam_student_xs"}
    lite = get_sam_spec("LiteMedSAM")
    assert (lite.image_size, lite.normalization, lite.box_rounding, lite.default_weights) == (256, "minmax", "trunc", True)
    assert get_sam_spec("sam-vit-t").name == "mobilesam"
    assert get_sam_spec("medsam").normalization == "minmax" and get_sam_spec("medsam").image_size == 1024
    assert all(s.description for s in list_models())
    assert not any(s.default_weights for s in list_models() if s.name != "litemedsam")


def test_unknown_name_lists_known():
    with pytest.raises(MedadaptError) as err:
        get_sam_spec("litemedsan")
    msg = str(err.value)
    assert "'litemedsam'" in msg  # suggestion
    for name in ("medsam", "sam_vit_b", "mobilesam", "sam_vit_t"):
        assert name in msg


@pytest.mark.parametrize("name", ["medsam", "sam_vit_h", "mobilesam"])
def test_no_bundled_weights_needs_checkpoint(name):
    with pytest.raises(MedadaptError, match="--checkpoint") as err:  # raised before building
        build_model(name)
    assert get_sam_spec(name).checkpoint_file in str(err.value)


def test_default_litemedsam_loads_official_weights():
    model = build_model("litemedsam")
    assert not model.training
    state = read_checkpoint(litemedsam_checkpoint_path())
    ours = model.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[k], v) for k, v in state.items())


def test_build_with_checkpoint_file(tmp_path):
    source = build_model("litemedsam", pretrained=False, image_size=64)
    path = tmp_path / "ft.pth"
    torch.save({"model": source.state_dict(), "epoch": 1}, path)
    model = build_model("litemedsam", checkpoint=path, image_size=64)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(), strict=True))
    with pytest.raises(MedadaptError, match="multiple of 16"):
        build_model("litemedsam", pretrained=False, image_size=100)
