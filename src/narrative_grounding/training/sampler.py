"""A shuffling sampler whose order depends only on (seed, epoch).

Exact resumption needs the data order of an epoch to be a pure function of the seed and the epoch
number: a run resumed in the middle of epoch e rebuilds the same permutation and skips the batches it
already trained on. torch's RandomSampler draws from the global RNG (or a generator whose state
depends on how many epochs were iterated in this process), so a resumed process would see another
order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Yields a permutation of `range(num_samples)` drawn from `numpy.random.default_rng([seed, epoch])`.

    Call `set_epoch(epoch)` before iterating each epoch (accelerate's prepared dataloaders forward
    `set_epoch` to the sampler they wrap). With `shuffle=False` the order is 0..num_samples-1.
    """

    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError(f"EpochSeededSampler needs at least one sample, got num_samples={num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> list[int]:
        """The order of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return list(range(self.num_samples))
        # A seed sequence of two words: every (seed, epoch) pair gets an independent stream.
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_samples
