"""The three networks at the sizes the configs use, 32 px (tests) to 1024 px."""

import pytest
import torch

from kssgan_hpc.config.train import ModelConfig
from kssgan_hpc.models import Discriminator, Generator, SiameseEncoder


@pytest.mark.parametrize("resolution", [32, 256, 1024])
def test_shapes_from_config(resolution: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=resolution, embed_dim=16, code_dim=16, siamese_width=4, generator_width=4,
                      discriminator_width=4, max_width=16)
    faces = torch.rand(2, 3, resolution, resolution) * 2 - 1
    embedding = SiameseEncoder(cfg)(faces)
    assert embedding.shape == (2, 16)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    out = Generator(cfg)(faces, embedding)
    assert out.shape == faces.shape and out.abs().max() <= 1
    real_fake, expression = Discriminator(cfg, num_expressions=8)(out)
    assert real_fake.shape == (2,) and expression.shape == (2, 8)
    assert Discriminator(cfg)(out)[1] is None  # no expression labels, no head


def test_generator_output_depends_on_the_target_code() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=32, embed_dim=8, code_dim=8, generator_width=4, max_width=8)
    g = Generator(cfg)
    for p in g.parameters():  # AdaIN starts as a plain norm (zero init); give the code a say
        torch.nn.init.normal_(p, std=0.1)
    faces = torch.rand(1, 3, 32, 32)
    a, b = torch.nn.functional.normalize(torch.randn(2, 8), dim=1).split(1)
    assert not torch.allclose(g(faces, a), g(faces, b))
