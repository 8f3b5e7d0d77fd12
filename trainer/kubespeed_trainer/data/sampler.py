"""A seeded, sharded, resumable sample order for data-parallel training.

The order is one endless stream: epoch e is a permutation of all sample
indices drawn from a generator seeded with (seed, e), and epochs follow one
another. Each step of the stream, every data-parallel rank takes the next
`micro_batch_size` indices in rank order, so within a pass ranks never share a
sample, and across ranks no sample of an epoch is dropped or repeated (a micro
batch may straddle two epochs).

The state is where the stream stands, (epoch, position), and is the same on
every rank, so rank 0 alone can save it. Loading it continues with exactly the
samples the uninterrupted run would have drawn next; the position is global,
so this holds even when the run resumes with another number of ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from kubespeed_trainer.data.dataset import TokenDataset


class ResumableSampler:
    def __init__(self, num_samples: int, *, rank: int, world_size: int, seed: int, micro_batch_size: int) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset has no samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.micro_batch_size = seed, micro_batch_size
        self.epoch, self.position = 0, 0
        self._permutation: tuple[int, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= state["position"] < self.num_samples:
            raise ValueError(f"position {state['position']} is outside an epoch of {self.num_samples} samples")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def drawn(self) -> int:
        """Samples the stream has handed out so far, over all ranks: equal counts mean the same samples were seen."""
        return self.epoch * self.num_samples + self.position

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._permutation = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._permutation[1]

    def next_indices(self) -> list[int]:
        """This rank's next micro batch; advances the shared stream by one micro batch per rank."""
        begin = self.rank * self.micro_batch_size
        wanted = range(begin, begin + self.micro_batch_size)
        stride = self.world_size * self.micro_batch_size
        indices: list[int] = []
        epoch, position = self.epoch, self.position
        taken = 0
        while taken < stride:
            perm = self.permutation(epoch)
            count = min(stride - taken, self.num_samples - position)
            lo, hi = max(begin, taken), min(wanted.stop, taken + count)
            if lo < hi:
                indices += perm[position + lo - taken:position + hi - taken].tolist()
            taken += count
            position += count
            if position == self.num_samples:
                epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        """Endless micro batches of indices; the state advances as each one is handed out."""
        while True:
            yield self.next_indices()


def _epoch_seed(seed: int, epoch: int) -> int:
    """Fold the epoch into the seed through a hash, so (seed, epoch) pairs never collide the way seed + epoch would."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


def batches(dataset: TokenDataset, sampler: ResumableSampler) -> Iterator[dict[str, torch.Tensor | None]]:
    """Stacked micro batches: input_ids LongTensor[B, T+1], loss_mask BoolTensor[B, T+1] or None."""
    for indices in sampler:
        yield dataset.gather(indices)
