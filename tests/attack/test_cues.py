"""The cue attackers: a face's own pose and labels identify its person within the cluster; drawn cues do not."""

from pathlib import Path

import numpy as np
import pytest

from kssgan_hpc.artefacts import load_siamese
from kssgan_hpc.attack.cues import LabelFrequencies, PoseHabit, ReleasedCues, run_cue_attack
from kssgan_hpc.attack.population import attack_population, population_of
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.ksame.build import identity_statistics, ksame
from kssgan_hpc.ksame.deidentify import draw_cues


def test_own_pose_cues_identify_people_and_cluster_draws_do_not(demo_data: Path, siamese_run: Path) -> None:
    data = FaceShards(demo_data, "train")  # 32 people, 10 photos each
    pop = population_of(data, 5, 5)
    clustering = ksame(identity_statistics(load_siamese(siamese_run)[0], data, 64), 4)
    attackers = {"posehabit": PoseHabit()}
    _, own = pop.shown_cues(clustering, 0, "own")
    leaked = attack_population(pop, None, None, 4, attackers, {}, own)["attackers"]["posehabit"]
    # People have pose habits: their own offsets single them out of their cluster of 4.
    assert leaked["rank1"] > 0.25 + 0.05 and leaked["p_value"] < 0.01, leaked
    _, drawn = pop.shown_cues(clustering, 0, "cluster")
    safe = attack_population(pop, None, None, 4, attackers, {}, drawn)["attackers"]["posehabit"]
    assert safe["draws"] == 16 and safe["rank1"] <= 0.25 + 0.05 and safe["p_value"] > 0.05, safe


def test_cluster_draws_permute_each_cluster_and_follow_the_secret(demo_data: Path, siamese_run: Path) -> None:
    data = FaceShards(demo_data, "train")
    clustering = ksame(identity_statistics(load_siamese(siamese_run)[0], data, 64), 4)
    ids = data.labels["identity"]
    shown = draw_cues(ids, clustering, secret=7)
    clusters = clustering.clusters_of(ids)
    assert sorted(shown) == list(range(len(ids)))  # every image's cues are shown exactly once
    assert (clusters[shown] == clusters).all()  # and only inside its own cluster
    assert (shown != np.arange(len(ids))).mean() > 0.5  # most faces show another image's cues
    assert (draw_cues(ids, clustering, secret=7) == shown).all()
    assert (draw_cues(ids, clustering, secret=8) != shown).any()
    assert (draw_cues(ids, clustering, secret=7, policy="own") == np.arange(len(ids))).all()
    with pytest.raises(ValueError, match="cue policy"):
        draw_cues(ids, clustering, secret=7, policy="mine")


def test_label_habits_identify_people_unless_the_labels_are_drawn() -> None:
    # Four people whose photos are labelled by habit: person p smiles (expression p) in 4 of 5 photos.
    people = np.repeat(np.arange(4), 5)
    expression = np.where(np.arange(20) % 5 == 0, (people + 1) % 4, people)
    gallery = {"expression": expression, "pose": np.full(20, -1), "gaze": np.full(20, -1)}
    landmarks = np.full((20, 5, 2), np.nan, np.float32)
    probe_ids = np.arange(4)

    def released(labels: np.ndarray) -> list[ReleasedCues]:
        return [ReleasedCues(offsets=np.full((4, 5, 2), np.nan, np.float32),
                             labels={"expression": labels, "pose": np.full(4, -1), "gaze": np.full(4, -1)},
                             candidates=[np.arange(4)] * 4)]

    own = run_cue_attack(LabelFrequencies(), landmarks, gallery, people, released(np.arange(4)), probe_ids, 4)
    assert own["rank1"] == 1.0
    unlabelled = run_cue_attack(LabelFrequencies(), landmarks, gallery, people, released(np.full(4, -1)), probe_ids, 4)
    assert unlabelled["rank1"] == pytest.approx(0.25)  # nothing to read: a random pick among the four
