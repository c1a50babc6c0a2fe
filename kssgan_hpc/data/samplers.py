"""Distributed, deterministic, resumable samplers: per-rank sample order and P x K identity batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_info(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
    return num_replicas, rank


class _ResumableSampler(Sampler):
    """Epoch + position bookkeeping shared by both samplers.

    The training loop knows how many items it consumed (the DataLoader prefetches), so it
    passes that count to `state_dict(consumed)`; after `load_state_dict` every iteration of
    that epoch skips them (a DataLoader may call `iter()` on its sampler more than once), and
    `set_epoch` to another epoch starts from the beginning again.
    """

    def __init__(self, num_replicas: int | None, rank: int | None, seed: int) -> None:
        self.num_replicas, self.rank = _rank_info(num_replicas, rank)
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self, consumed: int) -> dict[str, int]:
        """`consumed`: items of this epoch (samples or batches) this rank has already used."""
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["consumed"] and state["num_replicas"] != self.num_replicas:
            raise ValueError(
                f"cannot resume mid-epoch with {self.num_replicas} ranks: the state was saved with "
                f"{state['num_replicas']}; resume with the same rank count or from an epoch boundary"
            )
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self._skip = state["consumed"]


class DistributedShardSampler(_ResumableSampler):
    """Every rank gets a disjoint, equal-length, contiguous part of one per-epoch order.

    With `block_size` > 0 the order shuffles blocks of consecutive indices (which lie in the same
    shard) and then the indices inside each block, so a rank reads from a few shards at a time:
    page-cache friendly when the data are larger than memory. `drop_last=False` pads by
    repeating the start of the order so all ranks take the same number of steps.
    """

    def __init__(
        self,
        dataset: Sequence | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        block_size: int = 0,
    ) -> None:
        super().__init__(num_replicas, rank, seed)
        self.size = dataset if isinstance(dataset, int) else len(dataset)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.block_size = block_size
        if drop_last:
            self.per_rank = self.size // self.num_replicas
        else:
            self.per_rank = -(-self.size // self.num_replicas)

    def order(self, epoch: int) -> np.ndarray:
        """The global order of `epoch`, before it is cut into per-rank parts."""
        if not self.shuffle:
            return np.arange(self.size)
        rng = np.random.default_rng([self.seed, epoch])
        if self.block_size <= 0:
            return rng.permutation(self.size)
        blocks = [np.arange(s, min(s + self.block_size, self.size)) for s in range(0, self.size, self.block_size)]
        return np.concatenate([rng.permutation(blocks[b]) for b in rng.permutation(len(blocks))])

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for `epoch`."""
        order = self.order(epoch)
        total = self.per_rank * self.num_replicas
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch)[self._skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank


class IdentityBalancedBatchSampler(_ResumableSampler):
    """Batches of P identities x K images each (for contrastive/Siamese training), per rank.

    Identities are drawn without replacement until all were used, then reshuffled; an
    identity with fewer than K images is sampled with replacement. Ranks take interleaved
    batches of one global, seeded sequence, so their batches differ and the run is reproducible.
    """

    def __init__(
        self,
        identities: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank, seed)
        identities = np.asarray(identities)
        self.ids, inverse = np.unique(identities, return_inverse=True)
        if p < 1 or k < 1:
            raise ValueError(f"P={p} and K={k} must be at least 1")
        if p > len(self.ids):
            raise ValueError(f"P={p} identities per batch, but the split has only {len(self.ids)}")
        self.members = [np.flatnonzero(inverse == i) for i in range(len(self.ids))]
        self.p, self.k = p, k
        total = batches_per_epoch or max(len(identities) // (p * k), 1)
        self.per_rank = max(total // self.num_replicas, 1)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        total = self.per_rank * self.num_replicas
        queue: list[int] = []
        out = []
        for _ in range(total):
            if len(queue) < self.p:
                # Top up with a fresh permutation, never repeating an identity inside one batch.
                fresh = [i for i in rng.permutation(len(self.ids)).tolist() if i not in queue[: self.p]]
                queue.extend(fresh)
            chosen, queue = queue[: self.p], queue[self.p:]
            batch = []
            for identity in chosen:
                members = self.members[identity]
                batch.extend(rng.choice(members, self.k, replace=len(members) < self.k).tolist())
            out.append(batch)
        return out[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch)[self._skip:])

    def __len__(self) -> int:
        return self.per_rank
