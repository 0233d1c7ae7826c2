"""Which samples each process sees, in which order: seeded per epoch and sharded across DDP ranks.

Lightning's default DistributedSampler pads shards with repeated samples so that all ranks are equal, which
counts some validation images twice. Here training shards are cut to equal length (each epoch drops at most
world_size - 1 samples, a different few each time) and evaluation shards are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs, so a dataset can seed its augmentation from the epoch and the batch."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size, self.drop_uneven = rank, world_size, drop_uneven
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.drop_uneven:
            order = order[: len(order) - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in self._indices().tolist())

    def __len__(self) -> int:
        if self.drop_uneven:
            return self.num_samples // self.world_size
        return len(range(self.rank, self.num_samples, self.world_size))
