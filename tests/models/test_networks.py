"""The three networks at the sizes the configs use, 32 px (tests) to 1024 px; what G may see."""

import inspect

import pytest
import torch

from kssgan_hpc.config.train import ModelConfig
from kssgan_hpc.models import Discriminator, Generator, SiameseEncoder


def generator_inputs(n: int, resolution: int, z_dim: int = 32) -> tuple[torch.Tensor, ...]:
    base = torch.rand(n, 3, resolution, resolution) * 2 - 1
    landmarks = torch.rand(n, 5, 2) * resolution
    return base, landmarks, torch.full((n,), -1), torch.full((n,), -1), torch.randn(n, z_dim)


@pytest.mark.parametrize("resolution", [32, 256, 1024])
def test_shapes_from_config(resolution: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(channels=3, resolution=resolution, embed_dim=16, code_dim=16, siamese_width=4, generator_width=4,
                      discriminator_width=4, max_width=16)
    faces = torch.rand(2, 3, resolution, resolution) * 2 - 1
    embedding = SiameseEncoder(cfg)(faces)
    assert embedding.shape == (2, 16)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    out = Generator(cfg)(*generator_inputs(2, resolution))
    assert out.shape == faces.shape and out.abs().max() <= 1
    real_fake, expression = Discriminator(cfg, num_expressions=8)(out)
    assert real_fake.shape == (2,) and expression.shape == (2, 8)
    assert Discriminator(cfg)(out)[1] is None  # no expression labels, no head


def test_the_generator_has_no_way_in_for_source_pixels() -> None:
    # Its inputs are the cluster's base face, the declared cues and z: nothing else can be passed.
    assert list(inspect.signature(Generator.forward).parameters) == ["self", "base", "landmarks", "expression",
                                                                     "pose", "z"]


def test_step_zero_is_the_base_face_and_the_residual_is_bounded() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(channels=3, resolution=32, code_dim=8, z_dim=4, generator_width=4, max_width=8, residual_bound=0.1)
    g = Generator(cfg, num_expressions=3, num_poses=2)
    inputs = generator_inputs(3, 32, z_dim=4)
    base = inputs[0].clamp(-0.8, 0.8)
    assert torch.equal(g(base, *inputs[1:]), base)  # zero-initialised last layer
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.5)
    out = g(base, *inputs[1:])
    assert not torch.equal(out, base) and (out - base).abs().max() <= 0.1 + 1e-6


def test_cues_can_be_switched_off() -> None:
    torch.manual_seed(0)

    def build(**cues: bool) -> Generator:
        torch.manual_seed(0)
        g = Generator(ModelConfig(channels=3, resolution=32, code_dim=8, z_dim=4, generator_width=4, max_width=8, **cues),
                      num_expressions=3)
        for p in g.parameters():
            torch.nn.init.normal_(p, std=0.3)
        return g

    base, landmarks, _, pose, z = generator_inputs(2, 32, z_dim=4)
    moved = landmarks + 5
    smile, neutral = torch.tensor([0, 0]), torch.tensor([2, 2])
    on, off = build(), build(cue_landmarks=False, cue_expression=False)
    assert not torch.equal(on(base, landmarks, smile, pose, z), on(base, moved, smile, pose, z))
    assert not torch.equal(on(base, landmarks, smile, pose, z), on(base, landmarks, neutral, pose, z))
    assert torch.equal(off(base, landmarks, smile, pose, z), off(base, moved, neutral, pose, z))


def test_diffaugment_is_differentiable_keyed_and_off_at_zero() -> None:
    from kssgan_hpc.train.augment import augment
    from kssgan_hpc.train.run import keyed_generator

    images = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_(True)
    policy = ["color", "translation", "cutout"]
    out = augment(images, policy, 1.0, keyed_generator(0, 0, 5, 0, 0))
    assert out.shape == images.shape and not torch.equal(out, images)
    out.square().sum().backward()  # G's gradient flows through D's augmentation
    assert images.grad is not None and images.grad.abs().sum() > 0
    # The same key draws the same transforms (a resumed run augments as an uninterrupted one); another does not.
    again = augment(images, policy, 1.0, keyed_generator(0, 0, 5, 0, 0))
    assert torch.equal(out, again) and not torch.equal(out, augment(images, policy, 1.0, keyed_generator(0, 0, 6, 0, 0)))
    assert torch.equal(augment(images, policy, 0.0, keyed_generator(0)), images)
    # Cutout zeroes a square of half the side; translation moves whole pixels, zero-padded.
    holes = augment(torch.ones(4, 1, 32, 32), ["cutout"], 1.0, keyed_generator(1))
    assert ((holes == 0).flatten(1).sum(1) == 16 * 16).all()
    shifted = augment(torch.ones(4, 1, 32, 32), ["translation"], 1.0, keyed_generator(2))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
