"""`kssgan evaluate` on a tiny trained model, and the measures it is made of."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import OPEN_GATE, kssgan

from kssgan_hpc.config.gate import ALL_ATTACKERS, ATTACKERS, CUE_ATTACKERS
from kssgan_hpc.evaluate.baselines import gaussian_blur, ksame_pixel, pixelate
from kssgan_hpc.attack.kid import kernel_inception_distance, kid_interval
from kssgan_hpc.attack.measures import (cmc, cue_error, detected_landmarks, high_frequency_share, identity_gallery,
                                       psnr, spread_within, ssim)
from kssgan_hpc.evaluate.report import separated


@pytest.fixture(scope="module")
def report(demo_data: Path, gan_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("evaluate")
    kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={tmp / 'release'}", "splits=[train]", "k=4",
           f"ledger={tmp / 'ledger'}", *OPEN_GATE, "--no-progress", check=True)
    proc = kssgan("evaluate", f"gan={gan_run}", f"data={demo_data}", f"release={tmp / 'release'}",
                  f"out={tmp / 'report'}", "ks=[2,4]", "gallery_per_identity=2", "probes_per_identity=1",
                  "blur_sigma=0", "photo_masks=[face,head]", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dlib" in proc.stdout and "parrot" in proc.stdout and "clean" in proc.stdout
    assert "whole photos:" in proc.stdout
    return json.loads((tmp / "report" / "report.json").read_text()) | {"_out": str(tmp / "report")}


METHODS = ["original", "blur", "pixelate", "ksame_pixel@2", "ksame_aligned@2", "kssgan@2", "ksame_pixel@4",
           "ksame_aligned@4", "kssgan@4"]


def test_report_fields(report: dict) -> None:
    assert set(report["attackers"]) == set(ALL_ATTACKERS) and "dlib" in report["attackers"]["dlib"]
    assert set(report["populations"]) == {"training", "heldout"}
    training, heldout = report["populations"]["training"], report["populations"]["heldout"]
    assert (training["split"], training["identities"], training["probes"]) == ("train", 32, 32)
    assert (heldout["split"], heldout["identities"], heldout["probes"]) == ("test", 4, 4)
    for population in (training, heldout):
        assert list(population["methods"]) == METHODS
        for method, entry in population["methods"].items():
            assert set(entry["attackers"]) == set(ALL_ATTACKERS)
            # The cue attackers run on many secret cue draws where the faces show drawn cues.
            drawn = method.startswith(("ksame_aligned", "kssgan"))
            assert all(entry["attackers"][name]["draws"] == (16 if drawn else 1) for name in CUE_ATTACKERS)
            for result in entry["attackers"].values():
                assert 0 <= result["rank1"] <= 1 and result["cmc"] == sorted(result["cmc"]) and result["cmc"][-1] <= 1
                assert (result["p_value"] is None) == (entry["k"] is None)
            worst = max(entry["attackers"], key=lambda n: entry["attackers"][n]["rank1"])
            assert entry["worst"]["rank1"] == entry["attackers"][worst]["rank1"]
            assert -1 <= entry["ssim"] <= 1 and 0 <= entry["faces_detected"] <= 1
            assert entry["expression_accuracy"] is None  # the demo faces carry no expression labels
            assert entry["kid"] == pytest.approx(entry["kid"])
            assert entry["kid_ci95"][0] <= entry["kid_ci95"][1]
            assert entry["high_frequency_ci95"][0] <= entry["high_frequency"] <= entry["high_frequency_ci95"][1]
            # Drawn cues keep the clusters' variety of poses: the released spread is the sources' own kind.
            if method.startswith(("ksame_aligned", "kssgan")):
                variety = entry["pose_variety_px"]
                assert variety["released"] > 0 and variety["sources"] > 0
            # Cue fidelity against the landmarks each face was asked to take; k-Same-Pixel is asked none.
            assert (entry["cue_error_iod"] is None) == method.startswith("ksame_pixel") or entry["faces_detected"] == 0
            assert entry["cue_error_iod"] is None or entry["cue_error_iod"] >= 0
            assert set(entry["shown_pose_variety_px"]) == {"released", "sources"}
            # The third-party leak: SFace and dlib each, against the real faces' own false matches.
            assert set(entry["third_party"]) == {"sface", "dlib"}
            for leak in entry["third_party"].values():
                assert leak["excess"] == pytest.approx(leak["matched"] - leak["baseline"])
                assert leak["faces"] == population["probes"]
                assert leak["training_people"] == 32
            if method == "original":
                assert all(leak["excess"] == 0 for leak in entry["third_party"].values())
        assert population["methods"]["kssgan@4"]["k_bound"] == 0.25
        assert population["methods"]["original"]["ssim"] == pytest.approx(1.0)
    assert training["anonymity"]["4"] == {"clusters": 8, "min_identities_per_cluster": 4,
                                          "max_identities_per_cluster": 4, "every_cluster_at_least_k": True,
                                          "merged_identities": []}
    assert report["release"]["clusters"]["min_size"] >= 4 and report["release"]["forbidden_fields"] == []
    assert report["release"]["shipped"] in ("kssgan", "ksame_aligned")
    assert [(row["people"], row["method"]) for row in report["headline"]] == \
        [(p, m) for p in ("training", "heldout") for m in METHODS]
    assert "training/k=4/kssgan_beats_ksame_pixel_on_kid" in report["verdicts"]
    out = Path(report["_out"])
    assert (out / "contact_sheet.png").is_file() and not (out / "contact_sheet_SENSITIVE_originals.png").exists()


def test_whole_photos_are_attacked_whole_face_only_and_context_only(report: dict) -> None:
    photos = report["photos"]
    # The replaced photos are shown; beside their originals only on request (--include-originals).
    sheets = [Path(sheet).name for sheet in report["contact_sheets"]]
    assert "contact_sheet_photos.png" in sheets and not any("photos_SENSITIVE" in sheet for sheet in sheets)
    assert (Path(report["_out"]) / "contact_sheet_photos.png").is_file()
    assert set(photos) == {"training", "heldout"}
    for label, result in photos.items():
        assert result["k"] == 4 and result["probes"] == report["populations"][label]["probes"]
        assert set(result["masks"]) == {"face", "head"}
        for entry in result["masks"].values():
            for source in ("original", "kssgan"):
                assert set(entry[source]) == {"whole", "face", "context"}
                for view, found in entry[source].items():
                    expected = {"lowpass16", "eigenfaces", "descriptor"} | ({"sface"} if view != "context" else set())
                    assert set(found["attackers"]) == expected
                    assert all(0 <= r["rank1"] <= 1 and r["p_value"] is not None for r in found["attackers"].values())
            # Pasting changes only the region and its soft edge, which the context view greys out.
            for name, result_ in entry["kssgan"]["context"]["attackers"].items():
                assert result_["rank1"] == entry["original"]["context"]["attackers"][name]["rank1"], name


def test_baseline_sanity(report: dict) -> None:
    methods = report["populations"]["training"]["methods"]
    for name in ATTACKERS:
        # Blur of radius 0 is the originals: it re-identifies exactly like them.
        assert methods["blur"]["attackers"][name]["cmc"] == methods["original"]["attackers"][name]["cmc"], name
        # k-Same-Pixel shows one face per cluster of >= k people: rank-1 cannot beat 1/k.
        for k in (2, 4):
            assert methods[f"ksame_pixel@{k}"]["attackers"][name]["rank1"] <= 1 / k + 1e-9, (name, k)
    # One face per cluster has no pixel variety; posing it on drawn cues gives some (one probe per
    # person here: the sources' own variety needs two).
    assert methods["ksame_pixel@4"]["pixel_variety"]["released"] == 0.0
    assert methods["ksame_aligned@4"]["pixel_variety"]["released"] > 0
    assert methods["original"]["pixel_variety"]["sources"] is None
    # An average of faces loses their fine detail: k-Same-Pixel is blurrier than the originals.
    assert methods["ksame_pixel@4"]["high_frequency_ci95"][1] < methods["original"]["high_frequency_ci95"][0]
    # Independent recognizers re-identify the untouched faces far above chance (1/32).
    for name in ("sface", "lowpass16", "eigenfaces"):
        assert methods["original"]["attackers"][name]["rank1"] >= 0.5, name
    withheld = {w["method"] for w in report["contact_sheet_withheld"]}
    assert {"blur", "pixelate"} <= withheld  # the originals' re-identifiable stand-ins are never shown


def test_ties_count_as_a_random_pick() -> None:
    # Three identical templates (one k-Same cluster, the parrot's view): the probe is found 1 time in 3.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    curve = cmc(np.array([[1.0, 0.0]]), np.array([1]), np.arange(4), gallery)
    assert curve[0] == pytest.approx(1 / 3) and curve[1] == pytest.approx(2 / 3) and curve[2] == 1.0


def test_measures() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(6, 8))
    ids, templates = identity_gallery(np.repeat(gallery, 2, axis=0), np.repeat(np.arange(6), 2))
    probes = templates[[2, 0, 5]] + 0.01
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    assert cmc(probes, np.array([2, 0, 5]), ids, templates)[0] == 1.0
    assert cmc(probes, np.array([0, 2, 5]), ids, templates)[0] == pytest.approx(1 / 3)
    faces = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    assert ssim(faces, faces) == pytest.approx(np.ones(4)) and np.isinf(psnr(faces, faces)).all()
    assert (ssim(faces, gaussian_blur(faces, 2.0)) < 0.9).all()
    blocks = pixelate(faces, 8)
    assert blocks.shape == faces.shape and (blocks[:, :8, :8] == blocks[:, :1, :1]).all()
    assert ksame_pixel(np.array([7, 9]), {7: 1, 9: 0}, faces[:2]).tolist() == faces[[1, 0]].tolist()
    same, _ = kernel_inception_distance(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), subsets=10,
                                        subset_size=100)
    shifted, _ = kernel_inception_distance(rng.normal(size=(300, 16)), rng.normal(1.0, size=(300, 16)),
                                           subsets=10, subset_size=100)
    assert abs(same) < 0.05 < shifted
    # The interval: around 0 for one distribution, clear of it for a shifted one; a tighter one with more.
    low, high = kid_interval(rng.normal(size=(150, 16)), rng.normal(size=(60, 16)))
    assert low < 0 < high
    low_shift, _ = kid_interval(rng.normal(size=(150, 16)), rng.normal(1.0, size=(60, 16)))
    assert low_shift > high
    assert separated([0.0, 0.1], [0.2, 0.3]) is True and separated([0.2, 0.3], [0.0, 0.1]) is False
    assert separated([0.0, 0.25], [0.2, 0.3]) is None
    # Fine detail: an average (blur, pixelation) loses it; noise has more than a face.
    fine = high_frequency_share(faces)
    assert (high_frequency_share(gaussian_blur(faces, 2.0)) < fine / 3).all()
    assert (high_frequency_share(pixelate(faces, 8)) < fine).all()


def test_cue_fidelity_and_variety_on_constructed_cases() -> None:
    rng = np.random.default_rng(0)
    given = np.array([[[20, 24], [44, 24], [32, 36], [24, 46], [40, 46]]], np.float64).repeat(6, 0)
    given += rng.normal(0, 1, size=given.shape)
    iod = np.linalg.norm(given[:, 0] - given[:, 1], axis=1)
    assert cue_error(given, given) == 0.0
    # Every landmark found 0.1 inter-ocular distances off the one asked for: a cue error of 0.1.
    found = given + np.stack([0.1 * iod, np.zeros(6)], axis=1)[:, None, :]
    assert cue_error(given, found) == pytest.approx(0.1)
    # An output where no face was found does not count; none found at all: no figure.
    found[0] = np.nan
    assert cue_error(given, found) == pytest.approx(0.1) and cue_error(given, np.full_like(given, np.nan)) is None
    # YuNet rows (box, 5 points, score) on the 160 px view back to the face's own pixels.
    row = np.concatenate([[0, 0, 10, 10], (given[1] * 160 / 64).ravel(), [0.9]])
    assert np.allclose(detected_landmarks([row, None], 64)[0], given[1]) and np.isnan(detected_landmarks([None], 64)).all()
    # Variety: outputs that copy their cluster's mean score 0; the sources' own spread is kept as is.
    faces = rng.integers(0, 256, size=(8, 16, 16, 1)).astype(np.float64)
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    means = np.stack([faces[clusters == c].mean(0) for c in clusters])
    assert spread_within(means, clusters) == 0.0 and spread_within(faces, clusters) > 0
