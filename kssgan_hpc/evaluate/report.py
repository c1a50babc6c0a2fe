"""`kssgan evaluate`: privacy, anonymity, utility and realism of kSS-GAN beside three baselines.

On one split: per identity, `gallery_per_identity` original images form the attacker's gallery
(their mean embedding is the identity's template) and `probes_per_identity` other images are
de-identified by every method — Gaussian blur, pixelation, k-Same-Pixel and kSS-GAN (both per k,
the split's identities k-Same-clustered among themselves, as `kssgan anonymize` does) — and
re-identified against the gallery by each recognizer (rank-1 and CMC, beside chance 1/identities
and the k-Same bound 1/k). The originals are the baseline the release must fall from.

report.json holds every figure; contact_sheet.png shows, per cluster, the baselines and kSS-GAN
outputs (k-anonymous or blurred only). Source faces appear only in
contact_sheet_SENSITIVE_originals.png, written with include_originals.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kssgan_hpc import __version__
from kssgan_hpc.config.release import EvaluateConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import atomic_write_json
from kssgan_hpc.evaluate.baselines import gaussian_blur, ksame_pixel, pixelate
from kssgan_hpc.evaluate.kid import kernel_inception_distance
from kssgan_hpc.evaluate.measures import cmc, identity_gallery, landmark_drift, psnr, ssim
from kssgan_hpc.evaluate.recognizers import SFaceRecognizer, YuNet, make_recognizer, upscale
from kssgan_hpc.ksame.build import cluster_statistics, identity_statistics, load_siamese
from kssgan_hpc.release.anonymize import deidentify
from kssgan_hpc.release.checks import check_release_clusters, scan_release
from kssgan_hpc.train.validate import load_generator

log = logging.getLogger(__name__)


def read_images(data: FaceShards, indices: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] in the order of `indices`."""
    return data.__getitems__(indices.tolist()).images.permute(0, 2, 3, 1).numpy().copy()


def gallery_and_probes(identities: np.ndarray, gallery: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per identity, its first images (dataset order) for the gallery and the next ones as probes;
    identities with fewer than 2 images are left out."""
    g, p = [], []
    for identity in np.unique(identities):
        rows = np.flatnonzero(identities == identity)
        if len(rows) < 2:
            continue
        n_gallery = min(gallery, len(rows) - 1)
        g.extend(rows[:n_gallery])
        p.extend(rows[n_gallery:n_gallery + probes])
    return np.array(g, np.int64), np.array(p, np.int64)


def expression_accuracy(train_images: np.ndarray, train_labels: np.ndarray,
                        methods: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float] | None:
    """A classifier (logistic regression on 16x16 grey pixels) trained on original faces, applied to
    each method's outputs; None where the data has too few expression labels."""
    from sklearn.linear_model import LogisticRegression

    known = train_labels >= 0
    if known.sum() < 10 or len(np.unique(train_labels[known])) < 2 or (labels >= 0).sum() == 0:
        return None

    def features(images: np.ndarray) -> np.ndarray:
        import cv2

        grey = images.astype(np.float32).mean(-1)
        small = np.stack([cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA) for g in grey])
        flat = small.reshape(len(small), -1)
        return (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)

    classifier = LogisticRegression(max_iter=2000).fit(features(train_images[known]), train_labels[known])
    mask = labels >= 0
    return {name: float((classifier.predict(features(images[mask])) == labels[mask]).mean())
            for name, images in methods.items()}


def closer_to_cluster(outputs: np.ndarray, clusters: np.ndarray, gallery: np.ndarray) -> float:
    """Share of clusters whose outputs lie closer (cosine) to their own centroid than to any source
    identity's template: the released identity is the cluster's, not a member's."""
    passed = []
    for c in np.unique(clusters):
        members = outputs[clusters == c]
        centroid = members.mean(0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        to_own = float((members @ centroid).mean())
        to_source = float((members @ gallery.T).mean(0).max())
        passed.append(to_own > to_source)
    return float(np.mean(passed))


def reidentifiable(reid: dict[str, dict[str, Any]], method: str, k: int | None, ks: list[int],
                   margin: float = 0.1) -> float | None:
    """The rank-1 that keeps `method` off the default contact sheet, or None when it may be shown:
    above 1/k (1/min(ks) for methods without k) + margin for an independent recognizer (the
    Siamese only when no other was run). Such outputs are as good as source faces."""
    judges = [name for name in reid if name != "siamese"] or list(reid)
    worst = max(reid[name][method]["rank1"] for name in judges)
    return worst if worst > (1 / (k or min(ks))) + margin else None


def _contact_sheet(path: Path, rows: list[tuple[str, np.ndarray]], clusters: np.ndarray, per_cluster: int = 6,
                   max_clusters: int = 4) -> None:
    """Blocks of rows (methods) x columns (one cluster's probes), clusters side by side."""
    from PIL import Image, ImageDraw

    picks = []
    for c in np.unique(clusters)[:max_clusters]:
        picks.append(np.flatnonzero(clusters == c)[:per_cluster])
    size = rows[0][1].shape[1]
    scale = max(1, 96 // size)
    cell, label_w, gap = size * scale, 160, 8
    width = label_w + sum(len(p) * cell + gap for p in picks)
    sheet = Image.new("RGB", (width, len(rows) * cell + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, images) in enumerate(rows):
        draw.text((4, 16 + r * cell + cell // 2 - 6), name, fill="black")
        x = label_w
        for c, pick in enumerate(picks):
            if r == 0:
                draw.text((x, 2), f"cluster {c}", fill="black")
            for i in pick:
                face = images[i] if images[i].shape[-1] == 3 else np.repeat(images[i], 3, axis=-1)
                sheet.paste(Image.fromarray(face).resize((cell, cell), Image.NEAREST), (x, 16 + r * cell))
                x += cell
            x += gap
    sheet.save(path)


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    tick = time.time()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    generator, gan_cfg = load_generator(cfg.gan, device)
    siamese, _ = load_siamese(gan_cfg.siamese, device)
    data = FaceShards(Path(cfg.data), cfg.split)
    resolution = data.resolution
    identities = data.labels["identity"]
    gallery_rows, probe_rows = gallery_and_probes(identities, cfg.gallery_per_identity, cfg.probes_per_identity)
    gallery_images, probe_images = read_images(data, gallery_rows), read_images(data, probe_rows)
    gallery_ids, probe_ids = identities[gallery_rows], identities[probe_rows]
    n_ids = len(np.unique(probe_ids))
    sigma = cfg.blur_sigma if cfg.blur_sigma >= 0 else resolution / 16
    block = cfg.pixelate_block if cfg.pixelate_block > 0 else max(1, resolution // 8)
    methods: dict[str, np.ndarray] = {"original": probe_images, "blur": gaussian_blur(probe_images, sigma),
                                      "pixelate": pixelate(probe_images, block)}
    k_of: dict[str, int | None] = {"original": None, "blur": None, "pixelate": None}
    clusters_of_method: dict[str, np.ndarray] = {}
    anonymity: dict[str, Any] = {}
    ids, embeddings, identity_faces = identity_statistics(siamese, data, 64, device)  # once for every k
    for k in cfg.ks:
        if k > n_ids:
            anonymity[str(k)] = {"skipped": f"only {n_ids} identities in {cfg.split}"}
            continue
        groups, targets, pixel = cluster_statistics(embeddings, identity_faces, k, method=cfg.method, seed=cfg.seed)
        cluster_of = {int(ids[i]): c for c, group in enumerate(groups) for i in group}
        clusters = np.array([cluster_of[int(i)] for i in probe_ids])
        faces = pixel.round().clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        methods[f"ksame_pixel@{k}"] = ksame_pixel(probe_ids, cluster_of, faces)
        target = torch.from_numpy(targets).to(device)[torch.from_numpy(clusters).to(device)]
        generated = deidentify(generator, torch.from_numpy(probe_images).permute(0, 3, 1, 2), target)
        methods[f"kssgan@{k}"] = generated.permute(0, 2, 3, 1).numpy()
        k_of[f"ksame_pixel@{k}"] = k_of[f"kssgan@{k}"] = k
        clusters_of_method[f"kssgan@{k}"] = clusters
        sizes = [len(g) for g in groups]
        anonymity[str(k)] = {"clusters": len(groups), "min_identities_per_cluster": min(sizes),
                             "max_identities_per_cluster": max(sizes), "every_cluster_at_least_k": min(sizes) >= k}

    reid: dict[str, Any] = {}
    recognizers: dict[str, Any] = {}
    sface_features: dict[str, np.ndarray] = {}
    for name in cfg.recognizers:
        recognizer = make_recognizer(name, gan_cfg.siamese, device)
        log.info("re-identifying with %s", recognizer.name)
        gids, templates = identity_gallery(recognizer.embed(gallery_images), gallery_ids)
        reid[name] = {}
        for method, images in methods.items():
            embeddings = recognizer.embed(images)
            curve = cmc(embeddings, probe_ids, gids, templates)
            entry = {"rank1": float(curve[0]), "cmc": [round(float(v), 4) for v in curve], "k": k_of[method],
                     "chance": 1 / len(gids), "k_bound": None if k_of[method] is None else 1 / k_of[method]}
            if method in clusters_of_method:
                entry["clusters_closer_to_own_centroid"] = closer_to_cluster(
                    embeddings, clusters_of_method[method], templates)
            reid[name][method] = entry
            if isinstance(recognizer, SFaceRecognizer):
                sface_features[method] = embeddings
        recognizers[name] = {**recognizer.describe(), **(
            {"faces_detected": round(recognizer.detected / max(recognizer.seen, 1), 4)}
            if hasattr(recognizer, "detected") else {})}

    # Utility: how much changed, where the landmarks went, whether expression survives.
    detector = YuNet()
    marks = {m: [detector.detect(upscale(im)) for im in images] for m, images in methods.items()}
    expression = expression_accuracy(gallery_images, data.labels["expression"][gallery_rows], methods,
                                     data.labels["expression"][probe_rows])
    utility = {}
    for method, images in methods.items():
        drift, found = landmark_drift(marks["original"], marks[method])
        values = psnr(probe_images, images)
        utility[method] = {"ssim": float(ssim(probe_images, images).mean()),
                           "psnr_db": float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any()
                           else None, "landmark_drift_iod": drift, "faces_detected": found,
                           "expression_accuracy": None if expression is None else expression[method]}

    # Realism: KID against real faces of held-out people, in SFace's feature space (independent of
    # the generator, which never saw SFace; of the Siamese, which the attacker above uses).
    sface = SFaceRecognizer()
    realism: dict[str, Any] = {"feature_space": sface.describe(), "reference_splits": cfg.heldout}
    held = [FaceShards(Path(cfg.data), split) for split in cfg.heldout]
    if sum(len(h) for h in held) >= 2:
        reference = sface.embed(np.concatenate([read_images(h, np.arange(len(h))) for h in held if len(h)]))
        realism["reference_images"] = len(reference)
        for method, images in methods.items():
            features = sface_features[method] if method in sface_features else sface.embed(images)
            mean, std = kernel_inception_distance(reference, features, subsets=50, subset_size=200, seed=cfg.seed)
            realism[method] = {"kid": mean, "kid_std": std}

    release: dict[str, Any] | None = None
    if cfg.release:
        private, shipped = Path(cfg.release) / "private", Path(cfg.release) / "release"
        sources = [json.loads(line) for line in (Path(cfg.data) / "sources.jsonl").read_text().splitlines()]
        names = [s.get("path", "") for s in sources] + [s.get("sha256", "") for s in sources]
        problems = scan_release(shipped, names)
        release = {"path": str(shipped), "clusters": check_release_clusters(private),
                   "k": json.loads((shipped / "manifest.json").read_text())["k"], "forbidden_fields": problems}

    sheet_k = next((k for k in sorted(cfg.ks) if f"kssgan@{k}" in methods), None)
    sheets: list[str] = []
    withheld: list[dict[str, Any]] = []  # rows too re-identifiable for the default sheet
    if sheet_k is not None:
        shown = [("blur", "blur"), ("pixelate", "pixelate"), (f"k-Same-Pixel k={sheet_k}", f"ksame_pixel@{sheet_k}"),
                 (f"kSS-GAN k={sheet_k}", f"kssgan@{sheet_k}")]
        rows = [(label, methods[method]) for label, method in shown]
        safe_rows = []
        for label, method in shown:
            rank1 = reidentifiable(reid, method, k_of[method], cfg.ks) if reid else None
            if rank1 is None:
                safe_rows.append((label, methods[method]))
            else:
                withheld.append({"method": method, "rank1": rank1})
                safe_rows.append((f"{label}: WITHHELD", np.full_like(methods[method], 128)))
        clusters = clusters_of_method[f"kssgan@{sheet_k}"]
        _contact_sheet(out / "contact_sheet.png", safe_rows, clusters)
        sheets.append(str(out / "contact_sheet.png"))
        if cfg.include_originals:
            _contact_sheet(out / "contact_sheet_SENSITIVE_originals.png", [("SOURCE", probe_images), *rows], clusters)
            sheets.append(str(out / "contact_sheet_SENSITIVE_originals.png"))

    report = {"created_by": f"kssgan-hpc {__version__}", "date": time.strftime("%Y-%m-%d"), "split": cfg.split,
              "identities": n_ids, "gallery_images": len(gallery_rows), "probes": len(probe_rows),
              "resolution": resolution, "baselines": {"blur_sigma_px": sigma, "pixelate_block_px": block},
              "recognizers": recognizers, "reidentification": reid, "anonymity": anonymity, "utility": utility,
              "realism": realism, "release": release, "contact_sheets": sheets,
              "contact_sheet_withheld": withheld,
              "seconds": round(time.time() - tick, 1)}
    report["headline"] = headline(report)
    atomic_write_json(out / "report.json", report)
    return report


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: rank-1 per recognizer, SSIM, KID."""
    rows = []
    for method in report["utility"]:
        row: dict[str, Any] = {"method": method}
        for name, results in report["reidentification"].items():
            row[f"rank1/{name}"] = results[method]["rank1"]
        any_rec = next(iter(report["reidentification"].values()), {})
        row["k_bound"] = any_rec.get(method, {}).get("k_bound")
        row["ssim"] = report["utility"][method]["ssim"]
        row["kid"] = report["realism"].get(method, {}).get("kid")
        rows.append(row)
    return rows


def format_headline(report: dict[str, Any]) -> str:
    rows = report["headline"]
    columns = list(rows[0])
    lines = ["  ".join(f"{c:>16}" for c in columns)]
    for row in rows:
        cells = [f"{row[c]:>16.3f}" if isinstance(row[c], float) else f"{str(row[c]):>16}" for c in columns]
        lines.append("  ".join(cells))
    return "\n".join(lines)
