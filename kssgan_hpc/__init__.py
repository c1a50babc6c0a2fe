"""kssgan-hpc: k-Same-Siamese-GAN face de-identification at HPC scale."""

__version__ = "0.1.0"
