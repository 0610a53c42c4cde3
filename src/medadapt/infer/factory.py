"""Build a ready :class:`SamPredictor` from a model name, an optional checkpoint and an adapter run."""

from __future__ import annotations

from pathlib import Path

from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_spec


def build_predictor(
    model: str,
    *,
    checkpoint: Path | None = None,
    adapter: Path | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
    cache=None,
) -> SamPredictor:
    spec = get_spec(model)
    net = build_model(model, checkpoint=checkpoint)
    if adapter is not None:
        from medadapt.adapt.artifact import load_adapter

        net = load_adapter(net, _adapter_dir(adapter))
    net.eval()
    return SamPredictor(net, spec, batch_size=batch_size, precision=precision, cache=cache)


def _adapter_dir(path: Path) -> Path:
    """Accept a run folder (``RUN/adapter``) or the adapter folder itself."""
    path = Path(path)
    return path / "adapter" if (path / "adapter").is_dir() else path
