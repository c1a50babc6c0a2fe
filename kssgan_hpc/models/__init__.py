"""Siamese encoder, generator and discriminator; every size from ModelConfig."""

from kssgan_hpc.models.networks import Discriminator, Generator, SiameseEncoder, siamese_embeddings

__all__ = ["Discriminator", "Generator", "SiameseEncoder", "siamese_embeddings"]
