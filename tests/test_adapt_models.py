"""Models the adapt tests run on, and checks that they have the layouts the recipes target.

The SAM models are medadapt's own modules with the official state-dict layout. Forward passes
use small inputs so the adapt tests stay fast on a CPU: ``litemedsam(32)`` is the LiteMedSAM
architecture with unchanged parameter shapes at a 32-pixel input.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from medadapt.models.registry import build_model
from medadapt.models.sam import ImageEncoderViT, ViTConfig, build_sam


def litemedsam(img_size: int = 256, seed: int = 0) -> nn.Module:
    """LiteMedSAM (TinyViT encoder, 1x1 stem) from the model registry, random weights, eval mode."""
    torch.manual_seed(seed)
    model = build_model("litemedsam", pretrained=False, image_size=img_size)
    _randomise(model)
    return model.eval()


def small_vit_sam(seed: int = 0) -> nn.Module:
    """A 4-block SAM-ViT (2 windowed, 2 global) at 64 pixels, random weights, eval mode."""
    torch.manual_seed(seed)
    cfg = ViTConfig(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), img_size=64, patch_size=8,
                    window_size=4)
    model = build_sam(ImageEncoderViT(cfg))
    _randomise(model)
    return model.eval()


def _randomise(model: nn.Module) -> None:
    """Move zero-/one-initialised tensors (biases, norms, position tables) off their init values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() <= 1 or "rel_pos" in name or "attention_biases" in name or "pos_embed" in name:
                p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def sam_inputs(model: nn.Module, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    images = torch.randn(batch, 3, s, s, generator=g)
    x0 = torch.rand(batch, 2, generator=g) * s / 2
    boxes = torch.cat([x0, x0 + s / 4 + torch.rand(batch, 2, generator=g) * s / 4], dim=1)
    return {"images": images, "boxes": boxes}


def sam_forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mask logits and IoU predictions of one box per image, flattened into one tensor."""
    masks, iou = model(inputs["images"], boxes=inputs["boxes"], multimask_output=True)
    return torch.cat([masks.flatten(), iou.flatten()])


def swin_unetr(seed: int = 0) -> nn.Module:
    """A small MONAI SwinUNETR (3D): encoder ``swinViT``, MLPs with ``linear1``/``linear2``."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    return SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 1, 1)).eval()


# ----------------------------------------------------------------------------- layout checks

def test_litemedsam_has_the_official_layout(reference):
    manifest = json.loads((reference / "litemedsam.manifest.json").read_text())
    for size in (256, 32):  # the small-input variant keeps every key and shape
        sd = litemedsam(size).state_dict()
        assert {k: list(v.shape) for k, v in sd.items()} == {k: v["shape"] for k, v in manifest["keys"].items()}


def test_model_names_the_recipes_target():
    model = litemedsam(32)
    names = {n for n, _ in model.named_modules()}
    assert "image_encoder.layers.1.blocks.0.attn.qkv" in names
    assert "image_encoder.layers.3.blocks.1.mlp.fc2" in names
    assert "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj" in names
    assert "mask_decoder.transformer.final_attn_token_to_image.q_proj" in names
    vit = small_vit_sam()
    assert {"image_encoder.blocks.3.attn.qkv", "image_encoder.blocks.0.mlp.lin2"} <= {n for n, _ in vit.named_modules()}
    swin = swin_unetr()
    assert "swinViT.layers1.0.blocks.0.mlp.linear2" in {n for n, _ in swin.named_modules()}
