"""The training loops (Siamese, GAN), written once against kssgan_hpc.engine."""
