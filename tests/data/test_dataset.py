"""FaceShards: labels, pickling, DataLoader workers, and 2 real gloo ranks covering the split."""

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from helpers import read_shards
from kssgan_hpc.data import DistributedShardSampler, FaceShards


def test_items_match_the_shards(demo_data: Path) -> None:
    data = FaceShards(demo_data / "manifest.json", "train")
    assert len(data) == 320 and data.resolution == 32
    image, labels = data[100]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    expected = read_shards(demo_data)["train"]
    assert labels["identity"] == expected["identity"][100] and labels["expression"] == -1
    assert image.float().std() > 5  # a real face, not zeros
    last_image, _ = data[-1]
    assert torch.equal(last_image, data[319][0])


def test_pickles_and_reads_in_two_workers(demo_data: Path) -> None:
    data = FaceShards(demo_data, "val")
    data[0]  # opens a handle in this process: it must not travel with the pickle
    clone = pickle.loads(pickle.dumps(data))
    assert clone._files == {} and torch.equal(clone[5][0], data[5][0])
    loader = DataLoader(data, batch_size=7, num_workers=2, shuffle=False)
    seen = torch.cat([labels["index"] for _, labels in loader])
    assert sorted(seen.tolist()) == list(range(len(data)))
    images = torch.cat([images for images, _ in loader])
    assert torch.equal(images[13], data[13][0])


def _rank_main(rank: int, world: int, manifest: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = FaceShards(manifest, "train")
    sampler = DistributedShardSampler(data, seed=3, block_size=16)  # rank and world from torch.distributed
    sampler.set_epoch(1)
    loader = DataLoader(data, batch_size=8, sampler=sampler, num_workers=2)
    mine = torch.cat([labels["index"] for _, labels in loader])
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    if rank == 0:
        torch.save(torch.stack(gathered), out)
    dist.destroy_process_group()


def test_two_ranks_read_disjoint_parts_covering_all(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "indices.pt"
    port = 29500 + os.getpid() % 1000
    mp.spawn(_rank_main, args=(2, str(demo_data / "manifest.json"), port, str(out)), nprocs=2, join=True)
    parts = torch.load(out, weights_only=True)
    assert parts.shape == (2, 160)
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert sorted(parts.flatten().tolist()) == list(range(320))
    # Same order as the sampler computes without any process group: deterministic per epoch.
    expected = DistributedShardSampler(320, num_replicas=2, rank=1, seed=3, block_size=16)
    assert parts[1].tolist() == expected.indices(1).tolist()
    assert not np.array_equal(expected.indices(1), expected.indices(2))
