"""k-Same-Aligned: similarity fits, warps, and base faces that depend on the cluster and landmarks only."""

from pathlib import Path

import numpy as np
import torch

from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.ksame.aligned import mean_frame, render, similarity_matrices, to_frame
from kssgan_hpc.models.blocks import landmark_heatmaps
from kssgan_hpc.ksame.build import IdentityStatistics, ksame


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(10, 50, size=(3, 5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([4.0, -2.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T + shift
    matrices = similarity_matrices(points, moved).numpy()
    np.testing.assert_allclose(matrices[:, :, :2], np.broadcast_to(rotation, (3, 2, 2)), atol=1e-5)
    np.testing.assert_allclose(matrices[:, :, 2], np.broadcast_to(shift, (3, 2)), atol=1e-4)
    unknown = points.copy()
    unknown[1, 2] = np.nan  # an image without all its landmarks is left where it is
    np.testing.assert_allclose(similarity_matrices(unknown, moved).numpy()[1], [[1, 0, 0], [0, 1, 0]])


def test_moving_to_the_frame_and_back_keeps_the_face(demo_data: Path) -> None:
    data = FaceShards(demo_data, "train")
    images = data.__getitems__(list(range(8))).images.float()
    landmarks = data.labels["landmarks"][:8]
    frame = mean_frame(data.labels["landmarks"])
    moved = to_frame(images, landmarks, frame)
    back = render(moved, frame, landmarks)
    # Two bilinear resamplings blur a little; the face stays where it was.
    assert (back - images).abs().mean() < 0.06 * 255
    assert (moved - images).abs().mean() > (back - images).abs().mean()


def test_base_faces_depend_on_the_cluster_and_the_landmarks_only() -> None:
    rng = np.random.default_rng(1)
    stats = IdentityStatistics(ids=np.arange(8), embeddings=rng.normal(size=(8, 4)),
                               faces=rng.uniform(0, 255, (8, 1, 32, 32)), aligned=rng.uniform(0, 255, (8, 1, 32, 32)),
                               frame=np.array([[11, 12], [21, 12], [16, 17], [12, 23], [20, 23]], np.float32))
    clustering = ksame(stats, 4)
    a, b = clustering.groups[0][:2]
    other = clustering.groups[1][0]
    landmarks = np.repeat(stats.frame[None], 3, axis=0)
    base = clustering.base_faces(np.array([a, b, other]), landmarks)
    assert torch.equal(base[0], base[1])  # two members of one cluster, the same landmarks: the same face
    assert not torch.equal(base[0], base[2])
    template = torch.from_numpy(clustering.aligned[clustering.clusters_of([a])[0]]).float() / 127.5 - 1
    torch.testing.assert_close(base[0], template, atol=0.02, rtol=0)  # on the frame itself: the template
    shifted = landmarks[:1] + np.array([3.0, 0.0], np.float32)
    moved = clustering.base_faces(np.array([a]), shifted)
    torch.testing.assert_close(moved[0, :, :, 8:28], base[0, :, :, 5:25], atol=0.02, rtol=0)


def test_heatmaps_peak_at_the_landmarks() -> None:
    points = torch.tensor([[[5.0, 7.0], [20.0, 9.0], [12.0, 15.0], [8.0, 24.0], [float("nan"), 24.0]]])
    maps = landmark_heatmaps(points, 32)
    assert maps.shape == (1, 5, 32, 32)
    assert maps[0, 0].argmax().item() == 7 * 32 + 5 and maps[0, 0, 7, 5] == 1.0
    assert maps[0, 4].abs().sum() == 0  # an unknown landmark draws nothing
