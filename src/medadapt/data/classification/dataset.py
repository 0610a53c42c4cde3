"""The torch side of a classification split: a map-style dataset and a multi-pass epoch sampler."""

from __future__ import annotations

import torch

from medadapt.data.classification.split import ClassificationSplit
from medadapt.data.classification.transforms import ImageTransform


class ClassificationDataset(torch.utils.data.Dataset):
    """Torch dataset over a split: ``{"image": [3,S,S], "target", "known", "index"}``.

    ``target`` is float ``[num_outputs]`` (BCE) or an int64 scalar (CE); ``known`` marks labels that
    count. Augmentation of item ``i`` is seeded by ``(seed, epoch, i)``: set ``epoch`` each epoch.
    """

    def __init__(self, split: ClassificationSplit, transform: ImageTransform, *, seed: int = 0):
        self.split, self.transform, self.seed, self.epoch = split, transform, seed, 0
        self._targets = torch.from_numpy(split.targets())
        self._known = torch.from_numpy(split.known()).float()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        # i >= len: the same image on a later pass of one long epoch (EpochPasses), augmented anew
        seed = (self.seed * 1_000_003 + self.epoch * 100_003 + i) % 2**32
        i = i % len(self.split)
        return {"image": self.transform(self.split.load_image(i), seed), "target": self._targets[i],
                "known": self._known[i], "index": i}


class EpochPasses(torch.utils.data.Sampler[int]):
    """``num_samples`` indices made of fresh permutations of ``range(n)``, pass ``p`` offset by ``p*n``.

    Lets one "epoch" span several passes over a few-label training set (so validation, which the
    trainer runs at each epoch end, happens every ``val_every`` steps, not every few steps) while
    every pass still sees each image once, with its own augmentation seed (datasets map ``i % n``).
    """

    def __init__(self, n: int, num_samples: int, generator: torch.Generator | None = None):
        self.n, self.num_samples, self.generator = n, num_samples, generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        passes = -(-self.num_samples // self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.generator) + p * self.n for p in range(passes)])
        return iter(order[: self.num_samples].tolist())
