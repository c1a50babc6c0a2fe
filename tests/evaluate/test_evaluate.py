"""`kssgan evaluate` on a tiny trained model, and the measures it is made of."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import kssgan
from kssgan_hpc.evaluate.baselines import gaussian_blur, ksame_pixel, pixelate
from kssgan_hpc.evaluate.kid import kernel_inception_distance
from kssgan_hpc.evaluate.measures import cmc, identity_gallery, psnr, ssim
from kssgan_hpc.evaluate.report import reidentifiable


@pytest.fixture(scope="module")
def report(demo_data: Path, gan_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("evaluate")
    kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={tmp / 'release'}", "splits=[train]", "k=4",
           "--no-progress", check=True)
    proc = kssgan("evaluate", f"gan={gan_run}", f"data={demo_data}", f"release={tmp / 'release'}",
                  f"out={tmp / 'report'}", "ks=[2,4]", "gallery_per_identity=2", "probes_per_identity=1",
                  "blur_sigma=0", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank1/dlib" in proc.stdout and "clean" in proc.stdout
    return json.loads((tmp / "report" / "report.json").read_text()) | {"_out": str(tmp / "report")}


def test_report_fields(report: dict) -> None:
    methods = ["original", "blur", "pixelate", "ksame_pixel@2", "kssgan@2", "ksame_pixel@4", "kssgan@4"]
    assert report["identities"] == 32 and report["probes"] == 32 and report["gallery_images"] == 64
    assert set(report["reidentification"]) == {"siamese", "dlib", "sface"}
    assert "dlib" in report["recognizers"]["dlib"]["version"] and "opencv" in report["recognizers"]["sface"]["version"]
    for results in report["reidentification"].values():
        assert list(results) == methods
        for method, entry in results.items():
            assert 0 <= entry["rank1"] <= 1 and entry["cmc"] == sorted(entry["cmc"]) and entry["cmc"][-1] <= 1
            assert entry["chance"] == pytest.approx(1 / 32)
        assert results["kssgan@4"]["k_bound"] == 0.25
        assert 0 <= results["kssgan@4"]["clusters_closer_to_own_centroid"] <= 1
    assert report["anonymity"]["4"] == {"clusters": 8, "min_identities_per_cluster": 4, "max_identities_per_cluster": 4,
                                        "every_cluster_at_least_k": True}
    for method in methods:
        utility = report["utility"][method]
        assert -1 <= utility["ssim"] <= 1 and 0 <= utility["faces_detected"] <= 1
        assert utility["expression_accuracy"] is None  # the demo faces carry no expression labels
        assert report["realism"][method]["kid"] == pytest.approx(report["realism"][method]["kid"])
    assert report["utility"]["original"]["ssim"] == pytest.approx(1.0)
    assert report["release"]["clusters"]["min_size"] >= 4 and report["release"]["forbidden_fields"] == []
    assert [row["method"] for row in report["headline"]] == methods
    withheld = {w["method"] for w in report["contact_sheet_withheld"]}
    assert withheld <= {"blur", "pixelate", "ksame_pixel@2", "kssgan@2"}
    out = Path(report["_out"])
    assert (out / "contact_sheet.png").is_file() and not (out / "contact_sheet_SENSITIVE_originals.png").exists()


def test_baseline_sanity(report: dict) -> None:
    for name, results in report["reidentification"].items():
        # Blur of radius 0 is the originals: it re-identifies exactly like them.
        assert results["blur"]["cmc"] == results["original"]["cmc"], name
        # k-Same-Pixel shows one face per cluster of >= k people: rank-1 cannot beat 1/k.
        for k in (2, 4):
            assert results[f"ksame_pixel@{k}"]["rank1"] <= 1 / k + 0.05, (name, k)
    # The attacker who knows the system re-identifies the untouched faces far above chance.
    assert report["reidentification"]["siamese"]["original"]["rank1"] >= 0.5


def test_re_identifiable_outputs_are_withheld_from_the_default_sheet() -> None:
    reid = {"siamese": {"kssgan@4": {"rank1": 0.9}, "blur": {"rank1": 0.9}},
            "sface": {"kssgan@4": {"rank1": 0.40}, "blur": {"rank1": 0.55}},
            "dlib": {"kssgan@4": {"rank1": 0.20}, "blur": {"rank1": 0.10}}}
    assert reidentifiable(reid, "kssgan@4", 4, [2, 4]) == 0.40  # above 1/4 + 0.1 for SFace
    assert reidentifiable(reid, "blur", None, [2, 4]) is None  # 0.55 <= 1/2 + 0.1
    assert reidentifiable({"siamese": reid["siamese"]}, "kssgan@4", 4, [2, 4]) == 0.9  # the only judge


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
