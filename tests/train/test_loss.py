"""The GAN's losses (kssgan_hpc/train/loss.py) on hand-made tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from kssgan_hpc.train import loss


def test_adversarial_losses() -> None:
    real, fake = torch.tensor([3.0, 2.0]), torch.tensor([-3.0, -2.0])
    assert loss.d_adversarial(real, fake, "hinge") == 0  # both beyond the margin
    assert loss.d_adversarial(fake, real, "hinge") == pytest.approx(7.0)
    assert loss.d_adversarial(real, fake, "nonsat") < loss.d_adversarial(fake, real, "nonsat")
    assert loss.g_adversarial(torch.zeros(4), "nonsat") == pytest.approx(math.log(2))
    assert loss.g_adversarial(torch.tensor([1.0, 3.0]), "hinge") == pytest.approx(-2.0)


def test_r1_is_the_squared_gradient_norm_at_real_images() -> None:
    real = torch.randn(3, 1, 4, 4, requires_grad=True)
    weights = torch.randn(1, 1, 4, 4)
    logits = (real * weights).sum(dim=[1, 2, 3])  # gradient = weights for every image
    assert loss.r1_penalty(logits, real).item() == pytest.approx(weights.pow(2).sum().item(), rel=1e-5)


def test_expression_loss_ignores_unlabelled_images() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    assert loss.expression_loss(logits, torch.tensor([-1, -1, -1])) == 0
    assert loss.expression_loss(None, torch.tensor([0, 1, 0])) == 0
    labelled = loss.expression_loss(logits, torch.tensor([0, -1, 1]))
    assert labelled == pytest.approx(F.cross_entropy(logits[[0, 2]], torch.tensor([0, 1])).item())


def test_identity_losses() -> None:
    a, b = torch.eye(2)
    assert loss.identity_pull(a[None], a[None]) == 0 and loss.identity_pull(a[None], b[None]) == 1
    assert loss.identity_push(a[None], a[None], margin=0.3) == pytest.approx(0.7)
    assert loss.identity_push(a[None], b[None], margin=0.3) == 0  # only pushes away, never pulls to the source


def test_base_consistency_sees_low_frequencies_only() -> None:
    base = torch.zeros(1, 1, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1  # zero mean per 2x2
    assert loss.base_consistency(base + checker, base, size=8) == 0
    assert loss.base_consistency(base + 0.5, base, size=8) == pytest.approx(0.5)


def test_feature_matching_compares_batch_statistics_not_pairs() -> None:
    real = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # The same batch statistics in another order: nothing to match, whichever output is whose.
    assert loss.feature_matching(real.flip(0), real) == 0
    assert loss.feature_matching(real + 1.0, real) == pytest.approx(1.0)


def test_diversity_rewards_outputs_that_follow_the_noise_up_to_a_cap() -> None:
    z1, z2 = torch.zeros(2, 4), torch.ones(2, 4)
    same = torch.zeros(2, 1, 4, 4)
    assert loss.diversity(same, same + 0.3, z1, z2) < loss.diversity(same, same + 0.1, z1, z2)
    assert loss.diversity(same, same + 0.1, z1, z2) == pytest.approx(-0.1)
    assert loss.diversity(same, same, z1, z2) == 0  # bounded where G ignores z: nothing explodes
    assert loss.diversity(same, same + 2.0, z1, z2) == -loss.DIVERSITY_CAP  # noise for its own sake earns nothing
