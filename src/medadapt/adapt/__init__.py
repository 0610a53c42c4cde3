"""Parameter-efficient fine-tuning: one module per method, recipes that name them, artifacts.

- :mod:`.lora`: LoRA on the q/v rows of a fused ``qkv`` (SAMed form) and on plain Linears.
- :mod:`.peft_lora`: peft LoRA on any named Linear / Conv1d-3d.
- :mod:`.adapter`: bottleneck adapters (finetune-SAM, AdaptFormer).
- :mod:`.bitfit`, :mod:`.norm`: bias-only and norm-affine tuning.
- :mod:`.freeze`: freezing, counting, frozen BatchNorm statistics.
- :mod:`.recipes`: named recipes and :func:`apply_recipe`.
- :mod:`.artifact`: adapter-only safetensors + JSON, load onto a fresh base, merge.
"""

from medadapt.adapt.adapter import (
    Adapter,
    ParallelAdapter,
    SerialAdapter,
    apply_decoder_adapters,
    apply_encoder_adapters,
    apply_mlp_adapters,
)
from medadapt.adapt.artifact import (
    load_adapter,
    merge_adapter,
    merged_state_dict,
    read_adapter_meta,
    save_adapter,
)
from medadapt.adapt.bitfit import unfreeze_biases
from medadapt.adapt.freeze import (
    count_trainable,
    freeze_all,
    freeze_bn_stats,
    trainable_names,
    unfreeze,
    unfreeze_named,
)
from medadapt.adapt.lora import LoRALinear, LoRAQKV, apply_lora_decoder, apply_lora_qkv
from medadapt.adapt.norm import unfreeze_norms
from medadapt.adapt.peft_lora import apply_peft_lora, merge_peft_lora
from medadapt.adapt.recipes import RECIPES, AppliedRecipe, RecipeConfig, apply_recipe, get_recipe

__all__ = [
    "RECIPES",
    "Adapter",
    "AppliedRecipe",
    "LoRALinear",
    "LoRAQKV",
    "ParallelAdapter",
    "RecipeConfig",
    "SerialAdapter",
    "apply_decoder_adapters",
    "apply_encoder_adapters",
    "apply_lora_decoder",
    "apply_lora_qkv",
    "apply_mlp_adapters",
    "apply_peft_lora",
    "apply_recipe",
    "count_trainable",
    "freeze_all",
    "freeze_bn_stats",
    "get_recipe",
    "load_adapter",
    "merge_adapter",
    "merge_peft_lora",
    "merged_state_dict",
    "read_adapter_meta",
    "save_adapter",
    "trainable_names",
    "unfreeze",
    "unfreeze_biases",
    "unfreeze_named",
    "unfreeze_norms",
]
