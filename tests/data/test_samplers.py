"""Samplers: disjoint per rank, deterministic per epoch, resumable mid-epoch, P x K batches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kssgan_hpc.data import DistributedShardSampler, IdentityBalancedBatchSampler


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), world=st.integers(1, 5), block=st.integers(0, 40), drop=st.booleans())
def test_ranks_are_disjoint_and_cover(size: int, world: int, block: int, drop: bool) -> None:
    samplers = [DistributedShardSampler(size, world, r, seed=1, block_size=block, drop_last=drop)
                for r in range(world)]
    parts = [s.indices(0) for s in samplers]
    assert len({len(p) for p in parts}) == 1  # equal steps on every rank
    flat = np.concatenate(parts)
    if drop:
        assert len(set(flat.tolist())) == len(flat) == (size // world) * world
    else:
        assert set(flat.tolist()) == set(range(size))
        assert len(flat) - size < world  # padding only to even out


def test_block_shuffle_keeps_locality() -> None:
    order = DistributedShardSampler(1000, 1, 0, seed=0, block_size=100).order(0)
    blocks = order.reshape(10, 100) // 100
    assert all(len(set(row.tolist())) == 1 for row in blocks)  # each run of 100 stays in one block
    assert not np.array_equal(order, np.arange(1000))


def test_resume_mid_epoch_continues_exactly() -> None:
    full = DistributedShardSampler(100, 2, 1, seed=5)
    full.set_epoch(3)
    expected = list(full)
    resumed = DistributedShardSampler(100, 2, 1, seed=5)
    resumed.load_state_dict(full.state_dict(consumed=17))
    assert list(resumed) == expected[17:]
    assert list(resumed) == expected[17:]  # DataLoader may iter() twice: the skip holds for the epoch
    resumed.set_epoch(4)
    full.set_epoch(4)
    assert list(resumed) == list(full)  # the next epoch starts from the beginning
    with pytest.raises(ValueError, match="same rank count"):
        DistributedShardSampler(100, 4, 0).load_state_dict(full.state_dict(consumed=3))


def test_identity_batches_p_by_k() -> None:
    identities = np.repeat(np.arange(12), [10] * 10 + [2, 1])  # two people with fewer than K images
    samplers = [IdentityBalancedBatchSampler(identities, p=4, k=3, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    batches = [b for s in samplers for b in s.batches(0)]
    assert len(batches) == 2 * len(samplers[0]) and len(samplers[0]) == 102 // 12 // 2
    for batch in batches:
        people = identities[batch].reshape(4, 3)
        assert (people == people[:, :1]).all() and len(set(people[:, 0].tolist())) == 4
    assert samplers[0].batches(0) != samplers[1].batches(0)
    assert samplers[0].batches(0) == IdentityBalancedBatchSampler(identities, 4, 3, 2, 0, seed=0).batches(0)
    assert samplers[0].batches(0) != samplers[0].batches(1)
    resumed = IdentityBalancedBatchSampler(identities, 4, 3, 2, 0, seed=0)
    resumed.load_state_dict(samplers[0].state_dict(consumed=2))
    assert list(resumed) == samplers[0].batches(0)[2:]
    with pytest.raises(ValueError, match="only 12"):
        IdentityBalancedBatchSampler(identities, p=13, k=2)
