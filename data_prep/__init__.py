"""Data preparation: raw faces -> aligned HDF5 shards (kssgan_hpc.data defines the format)."""
