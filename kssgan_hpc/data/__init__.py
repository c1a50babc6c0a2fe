"""The shard format (shards.py), the reader Dataset (dataset.py), samplers (samplers.py) and the pixel
conventions between shards, networks and measures (pixels.py).

The torch-based reader and samplers are imported lazily so that data prep, which forks
worker processes, never imports torch.
"""

from kssgan_hpc.data.shards import FORMAT_VERSION, ShardError, ShardWriter, load_manifest, open_shard

_LAZY = {
    "FaceShards": "kssgan_hpc.data.dataset",
    "DistributedShardSampler": "kssgan_hpc.data.samplers",
    "IdentityBalancedBatchSampler": "kssgan_hpc.data.samplers",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kssgan_hpc.data' has no attribute {name!r}")


__all__ = ["FORMAT_VERSION", "ShardError", "ShardWriter", "load_manifest", "open_shard", *_LAZY]
