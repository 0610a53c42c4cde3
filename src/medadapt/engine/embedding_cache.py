"""Cache of frozen image-encoder outputs.

With a frozen SAM image encoder (decoder-only or prompt tuning) the encoder is >95% of the compute
and its output for a given preprocessed slice never changes, so each slice is encoded once and the
[256, 64, 64] embedding is reused every epoch, and across runs when a ``directory`` is given.

Only valid while the encoder is frozen: an adapter inside the encoder (e.g. LoRA on qkv) changes its
output every step, so such recipes must not use this cache. ``model_key`` must identify the encoder
weights; :func:`module_fingerprint` makes one.

The key of an entry is ``sha1(model_key, shape, dtype, bytes)`` of the exact input tensor, so any
change in preprocessing is a miss, never a stale hit. Disk entries are one safetensors file per key,
written atomically, so concurrent processes can share a directory.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from medadapt.io.atomic import atomic_path


def module_fingerprint(module: nn.Module, *, checkpoint_sha: str | None = None, samples: int = 16) -> str:
    """Cheap hash of a module's weights: names, shapes, dtypes, a few values and two norms per tensor.

    One pass over the weights (about 0.1 s for a ViT-B on CPU) instead of hashing every byte. The
    L1/L2 norms (float64, 9 significant digits, so thread count and reduction order do not change
    them) catch an edit anywhere in a tensor; the sampled values are compared bit-exactly.
    """
    h = hashlib.sha1()
    if checkpoint_sha:
        h.update(checkpoint_sha.encode())
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.reshape(-1)
        n = flat.numel()
        if n == 0:
            continue
        values = flat if flat.is_floating_point() else flat.double()
        idx = torch.linspace(0, n - 1, steps=min(samples, n), device=flat.device).long()
        h.update(values[idx].double().cpu().numpy().tobytes())
        l1 = torch.linalg.vector_norm(values, 1, dtype=torch.float64).item()
        l2 = torch.linalg.vector_norm(values, 2, dtype=torch.float64).item()
        h.update(f"{l1:.9e}|{l2:.9e}".encode())
    return h.hexdigest()


class EmbeddingCache:
    """Memory (LRU) and optional disk cache around ``encode_fn: [B, 3, S, S] -> [B, 256, 64, 64]``.

    Entries are stored in ``dtype`` (float16 halves memory and disk; SAM embeddings are well within
    its range) and returned in ``out_dtype`` on the input's device. Misses are returned from the
    stored copy too, so the same slice always yields the same tensor, cached or not.
    """

    def __init__(
        self,
        encode_fn: Callable[[Tensor], Tensor],
        model_key: str,
        *,
        directory: str | Path | None = None,
        max_memory_items: int | None = None,
        dtype: torch.dtype = torch.float16,
        out_dtype: torch.dtype = torch.float32,
    ):
        if not model_key:
            raise ValueError("model_key must identify the encoder weights (see module_fingerprint)")
        self.encode_fn = encode_fn
        self.model_key = model_key
        self.directory = None if directory is None else Path(directory)
        self.max_memory_items = max_memory_items
        self.dtype = dtype
        self.out_dtype = out_dtype
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0
        self.encode_seconds = 0.0  # time spent in encode_fn (a cold fit's share of encoding)

    # ------------------------------------------------------------------ keys
    def key(self, image: Tensor) -> str:
        """Hex key of one preprocessed input [3, S, S] under this cache's ``model_key``."""
        x = image.detach().cpu().contiguous()
        h = hashlib.sha1()
        h.update(f"{self.model_key}|{tuple(x.shape)}|{x.dtype}|".encode())
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; hash the same bits
            x = x.view(torch.int16)
        h.update(x.numpy())  # buffer protocol: no copy
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    # ------------------------------------------------------------------ lookup
    def get(self, image: Tensor) -> Tensor:
        """[3, S, S] -> [256, 64, 64]."""
        return self.get_many(image.unsqueeze(0))[0]

    def get_many(self, batch: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, 256, 64, 64]; the misses are encoded in one batched call.

        Runs with autocast off: a training step under bf16 autocast (``--precision bf16``) must
        not encode the frozen encoder in bf16 under a key that does not say so, and autocast
        cannot stack the stored float16 tensors. An ``encode_fn`` that wants a lower precision
        enters its own autocast (as ``SamPredictor`` does, with the precision in its key).
        """
        with torch.autocast(device_type=batch.device.type, enabled=False):
            return self._get_many(batch)

    def encode_uncached(self, batch: Tensor) -> Tensor:
        """``encode_fn`` on inputs seen only once (e.g. augmented slices), returned exactly as a stored
        entry would be (same autocast rule, rounded through ``dtype``) but not stored."""
        with torch.autocast(device_type=batch.device.type, enabled=False), torch.no_grad():
            return self.encode_fn(batch).to(self.dtype).to(device=batch.device, dtype=self.out_dtype)

    def _get_many(self, batch: Tensor) -> Tensor:
        keys = [self.key(x) for x in batch]
        found: dict[str, Tensor] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            if k in found:
                self.hits += 1
                continue
            emb = self._lookup(k)
            if emb is None:
                if all(keys[j] != k for j in todo):
                    todo.append(i)
                self.misses += 1
            else:
                found[k] = emb
                self.hits += 1
        if todo:
            start = time.perf_counter()
            with torch.no_grad():
                new = self.encode_fn(batch[todo])  # [M, 256, 64, 64]
            self.encode_seconds += time.perf_counter() - start
            for j, i in enumerate(todo):
                emb = new[j].detach().to("cpu", self.dtype).clone()  # clone: do not pin the batch
                found[keys[i]] = emb
                self._remember(keys[i], emb)
                if self.directory is not None:
                    self._write(keys[i], emb)
        out = torch.stack([found[k] for k in keys])
        return out.to(device=batch.device, dtype=self.out_dtype)

    def _lookup(self, key: str) -> Tensor | None:
        emb = self._memory.get(key)
        if emb is not None:
            self._memory.move_to_end(key)
            return emb
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            emb = load_file(path)["embedding"].to(self.dtype)
        except (SafetensorError, KeyError, OSError):
            return None  # torn or foreign file: recompute and overwrite it
        self.disk_hits += 1
        self._remember(key, emb)
        return emb

    def _remember(self, key: str, emb: Tensor) -> None:
        if self.max_memory_items == 0:
            return
        self._memory[key] = emb
        self._memory.move_to_end(key)
        while self.max_memory_items is not None and len(self._memory) > self.max_memory_items:
            self._memory.popitem(last=False)

    def _write(self, key: str, emb: Tensor) -> None:
        with atomic_path(self._path(key)) as tmp:
            save_file({"embedding": emb.contiguous()}, str(tmp), metadata={"model_key": self.model_key})

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, image: Tensor) -> bool:
        key = self.key(image)
        return key in self._memory or (self.directory is not None and self._path(key).is_file())

    def clear_memory(self) -> None:
        self._memory.clear()

    def stats(self) -> dict[str, int | float]:
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits, "in_memory": len(self),
                "encode_seconds": round(self.encode_seconds, 3)}
