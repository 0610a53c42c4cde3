"""The training commands' option models are composed of the shared parts of medadapt.engine.options."""

from __future__ import annotations

import pytest

from medadapt.deploy.distill import DistillOptions
from medadapt.engine import options as parts
from medadapt.engine.classify_fit import ClassifyFitOptions
from medadapt.engine.pretrain import PretrainOptions
from medadapt.engine.sam_fit import FitOptions
from medadapt.engine.volumetric_fit import VolumetricFitOptions
from medadapt.errors import MedadaptError

PARTS = (parts.SampleOptions, parts.SplitOptions, parts.LayoutOptions, parts.LoraOptions, parts.LoopOptions,
         parts.ValidationOptions, parts.OptimOptions, parts.VolumeArchOptions)
COMPOSED = {
    FitOptions: (parts.SplitOptions, parts.LayoutOptions, parts.LoraOptions, parts.OptimOptions),
    VolumetricFitOptions: (parts.SplitOptions, parts.VolumeArchOptions, parts.LoraOptions, parts.OptimOptions),
    ClassifyFitOptions: (parts.SampleOptions, parts.LoraOptions, parts.LoopOptions, parts.ValidationOptions),
    PretrainOptions: (parts.VolumeArchOptions, parts.LoopOptions),
    DistillOptions: (parts.SplitOptions, parts.LayoutOptions, parts.OptimOptions),
}
REQUIRED = {FitOptions: {"data": "d", "out": "o"}, VolumetricFitOptions: {"data": "d", "out": "o"},
            ClassifyFitOptions: {"data": "d", "out": "o"}, DistillOptions: {"data": "d", "out": "o"},
            PretrainOptions: {"datasets": [{"data": "d"}], "out": "o"}}


@pytest.mark.parametrize("model", list(COMPOSED), ids=lambda m: m.__name__)
def test_models_inherit_their_parts_and_redeclare_only_other_defaults(model):
    for part in COMPOSED[model]:
        assert issubclass(model, part)
    own = model.__dict__.get("__annotations__", {})
    for part in PARTS:
        if not issubclass(model, part):
            continue
        for name, field in part.model_fields.items():
            if name in own:  # a re-declaration must change the default, type or range, not repeat the part
                mine = model.model_fields[name]
                assert (mine.default, mine.annotation, mine.metadata) != (field.default, field.annotation,
                                                                          field.metadata), (model.__name__, name)


@pytest.mark.parametrize("model", list(COMPOSED), ids=lambda m: m.__name__)
def test_flat_keys_set_shared_and_own_fields(model):
    """``--lr`` and ``--set key=value`` keep flat keys: shared parts' fields are set like the model's own."""
    opts = parts.build_options(model, {**REQUIRED[model], "lr": 0.02, "seed": "3", "batch_size": "5"}, None, "fit")
    assert (opts.lr, opts.seed, opts.batch_size) == (0.02, 3, 5)
    with pytest.raises(MedadaptError, match="weight_decay"):  # TrainConfig's ranges, checked with the option's name
        parts.build_options(model, {**REQUIRED[model], "weight_decay": -1}, None, "fit")
