"""Embedding cache (memory, disk, batching of misses) and module fingerprints."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medadapt.engine.embedding_cache import EmbeddingCache, module_fingerprint


class CountingEncoder(nn.Module):
    """[B, 3, 64, 64] -> [B, 256, 64, 64]; records the batch size of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv2d(3, 256, 1)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.proj(x)


def _images(n, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_misses_then_hits_and_batched_misses():
    enc = CountingEncoder()
    cache = EmbeddingCache(enc, module_fingerprint(enc))
    x = _images(3)
    first = cache.get_many(x)
    assert first.shape == (3, 256, 64, 64) and first.dtype == torch.float32
    assert enc.calls == [3] and cache.misses == 3 and cache.hits == 0
    second = cache.get_many(x)
    assert enc.calls == [3] and cache.hits == 3
    assert torch.equal(first, second)  # misses are returned from the stored copy too
    torch.testing.assert_close(first, enc.proj(x).detach().half().float())
    # two known slices and one new one: only the new one is encoded
    mixed = torch.cat([x[:2], _images(1, seed=5)])
    out = cache.get_many(mixed)
    assert enc.calls == [3, 1] and cache.misses == 4
    assert torch.equal(out[:2], first[:2])
    # a changed input (preprocessing) is a miss, never a stale hit
    cache.get(x[0] + 1e-3)
    assert enc.calls == [3, 1, 1]


def test_no_grad_and_duplicates_in_one_batch():
    enc = CountingEncoder()
    cache = EmbeddingCache(enc, "k", dtype=torch.float32)
    x = _images(1).repeat(2, 1, 1, 1)
    out = cache.get_many(x)
    assert enc.calls == [1] and not out.requires_grad
    torch.testing.assert_close(out[0], enc.proj(x[:1])[0].detach())


def test_bf16_training_step_gets_fp32_embeddings():
    """Under bf16 autocast (``fit``/``distill --precision bf16``) the frozen encoder still runs in fp32."""
    enc = CountingEncoder()
    seen = []
    cache = EmbeddingCache(lambda b: seen.append(torch.is_autocast_enabled("cpu")) or enc(b), "k")
    x = _images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = cache.get_many(x)
        second = cache.get_many(x)  # hits: stacking the float16 copies under autocast
    assert seen == [False] and first.dtype == second.dtype == torch.float32
    torch.testing.assert_close(first, enc.proj(x).detach().half().float())


def test_disk_persistence_across_instances(tmp_path):
    enc = CountingEncoder()
    key = module_fingerprint(enc)
    x = _images(2)
    first = EmbeddingCache(enc, key, directory=tmp_path).get_many(x)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temporaries
    other = EmbeddingCache(enc, key, directory=tmp_path)  # "a second process"
    again = other.get_many(x)
    assert enc.calls == [2] and other.disk_hits == 2 and torch.equal(first, again)
    # another encoder (different key) does not reuse them
    EmbeddingCache(enc, key + "-other", directory=tmp_path).get_many(x)
    assert enc.calls == [2, 2]


def test_corrupt_disk_entry_is_recomputed(tmp_path):
    enc = CountingEncoder()
    x = _images(1)
    EmbeddingCache(enc, "k", directory=tmp_path).get_many(x)
    (path,) = tmp_path.rglob("*.safetensors")
    path.write_bytes(b"garbage")
    out = EmbeddingCache(enc, "k", directory=tmp_path).get_many(x)
    assert enc.calls == [1, 1] and out.shape == (1, 256, 64, 64)


def test_memory_limit_evicts_least_recent():
    enc = CountingEncoder()
    cache = EmbeddingCache(enc, "k", max_memory_items=2)
    a, b, c = _images(3)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now most recent
    cache.get(c)  # evicts b
    assert len(cache) == 2 and a in cache and b not in cache and c in cache


def test_fingerprint_tracks_weights():
    enc = CountingEncoder()
    fp = module_fingerprint(enc)
    assert module_fingerprint(copy.deepcopy(enc)) == fp  # same weights, same key
    with torch.no_grad():
        enc.proj.weight[17, 2] += 1e-3  # one weight, not necessarily a sampled one
    assert module_fingerprint(enc) != fp
    assert module_fingerprint(enc, checkpoint_sha="abc") != module_fingerprint(enc)
