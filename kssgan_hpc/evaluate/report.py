"""`kssgan evaluate`: privacy (every attacker), anonymity, utility and realism of kSS-GAN beside the baselines.

Two populations, each de-identified and attacked on its own: the **training** people (those the
Siamese and G trained on: does G memorise its training sources?) and the **held-out** people
(never seen by either: the real use). In each, per person, `gallery_per_identity` original images
are the attacker's gallery and `probes_per_identity` other images are de-identified by every
method — Gaussian blur, pixelation, and per k: k-Same-Pixel, k-Same-Aligned (the generator's base
and the gate's fallback) and kSS-GAN, the population k-Same-clustered among itself as `kssgan
anonymize` does — and attacked by every attacker (attack/attackers.py): rank-1 and CMC beside 1/k,
a one-sided binomial p-value against 1/k, and the worst attacker. Per method also: faces detected
(YuNet), landmark drift, SSIM, PSNR, expression accuracy and KID in SFace's space against real
faces of the people outside the population.

report.json holds every figure; contact_sheet.png shows, per cluster of held-out people, the methods
no attacker re-identifies above 1/k + 0.1 (the others are withheld). Source faces appear only in
contact_sheet_SENSITIVE_originals.png, written with include_originals.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kssgan_hpc import __version__
from kssgan_hpc.artefacts import load_generator, load_siamese
from kssgan_hpc.attack.attackers import make_attacker
from kssgan_hpc.attack.kid import kernel_inception_distance, kid_interval
from kssgan_hpc.attack.measures import (cue_error, detected_landmarks, high_frequency_share, landmark_drift, psnr,
                                       spread_within, ssim)
from kssgan_hpc.attack.population import Population, attack_population, population_of
from kssgan_hpc.attack.recognizers import SFaceRecognizer, YuNet, upscale
from kssgan_hpc.attack.third_party import ThirdParties, excluded_people
from kssgan_hpc.config.release import EvaluateConfig
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards, read_images
from kssgan_hpc.data.shards import SPLITS, verify_dataset
from kssgan_hpc.distributed import choose_device
from kssgan_hpc.errors import InputError
from kssgan_hpc.evaluate.baselines import gaussian_blur, ksame_pixel, pixelate
from kssgan_hpc.evaluate.photos import photo_attacks
from kssgan_hpc.files import atomic_output, atomic_write_json
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.ksame.build import identity_statistics, ksame
from kssgan_hpc.ksame.deidentify import deidentify
from kssgan_hpc.release.checks import SourceSecrets, check_release_clusters, scan_release

log = logging.getLogger(__name__)

SHEET_MARGIN = 0.1
"""A method whose worst attacker re-identifies above 1/k + this is withheld from the default sheet."""


def expression_accuracy(train_images: np.ndarray, train_labels: np.ndarray,
                        methods: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float | None] | None:
    """A classifier (logistic regression on 16x16 grey pixels) trained on original faces, applied to
    each method's outputs and scored against the labels each output is released with (its source's,
    or those of the image whose cues it shows); None where the data has too few expression labels."""
    from sklearn.linear_model import LogisticRegression

    known = train_labels >= 0
    if known.sum() < 10 or len(np.unique(train_labels[known])) < 2:
        return None

    def features(images: np.ndarray) -> np.ndarray:
        import cv2

        grey = images.astype(np.float32).mean(-1)
        small = np.stack([cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA) for g in grey])
        flat = small.reshape(len(small), -1)
        return (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)

    classifier = LogisticRegression(max_iter=2000).fit(features(train_images[known]), train_labels[known])
    return {name: float((classifier.predict(features(images[labels >= 0])) == labels[labels >= 0]).mean())
            if (labels >= 0).any() else None for name, (images, labels) in methods.items()}


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
    with atomic_output(path) as tmp:
        sheet.save(tmp)


def _methods(pop: Population, cfg: EvaluateConfig, generator: torch.nn.Module, siamese: torch.nn.Module,
             device: torch.device, sigma: float, block: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every method's outputs on the probes and on the gallery (for the parrot), its k and clusters."""
    own = [pop.released_cues(pop.probe_rows, None)]  # the untouched, blurred, pixelated faces show their own
    landmarks = pop.data.labels["landmarks"]
    methods: dict[str, dict[str, Any]] = {
        "original": {"probes": pop.probe_images, "gallery": pop.gallery.images},
        "blur": {"probes": gaussian_blur(pop.probe_images, sigma), "gallery": gaussian_blur(pop.gallery.images, sigma)},
        "pixelate": {"probes": pixelate(pop.probe_images, block), "gallery": pixelate(pop.gallery.images, block)}}
    for entry in methods.values():
        entry.update(k=None, clustering=None, released=own, given=landmarks[pop.probe_rows])
    anonymity: dict[str, Any] = {}
    stats = identity_statistics(siamese, pop.data, 64, device)  # one pass serves every k
    for k in cfg.ks:
        clustering = ksame(stats, k, method=cfg.method, seed=cfg.seed)
        clusters = clustering.clusters_of(pop.probe_ids)
        cluster_of = {int(i): int(c) for i, c in zip(clustering.ids, clustering.clusters_of(clustering.ids))}
        faces = clustering.pixel.transpose(0, 2, 3, 1)
        methods[f"ksame_pixel@{k}"] = {"probes": ksame_pixel(pop.probe_ids, cluster_of, faces),
                                       "gallery": ksame_pixel(pop.gallery.identities, cluster_of, faces),
                                       "released": [pop.released_cues(None, clustering)]}
        shown, released = pop.shown_cues(clustering, cfg.seed + k, cfg.cues)  # as a release draws them
        # The landmarks G and k-Same-Aligned are asked to take: the drawn cue's pose on the cluster's geometry.
        asked = pop.cues(shown[pop.probe_rows])
        given = clustering.pose_landmarks(asked["identity"], asked["landmarks"])
        for method in ("ksame_aligned", "kssgan"):
            # Probe and gallery images draw different z (keys): the attacker cannot replay the noise.
            run = {part: deidentify(method, clustering, pop.cues(shown[rows]), generator=generator,
                                    seed=cfg.seed + k, keys=rows, device=device)
                   for part, rows in (("probes", pop.probe_rows), ("gallery", pop.gallery_rows))}
            methods[f"{method}@{k}"] = {**run, "released": released, "shown": shown[pop.probe_rows], "given": given}
        methods[f"ksame_pixel@{k}"]["given"] = None  # one face per cluster: no cue asked
        for name in ("ksame_pixel", "ksame_aligned", "kssgan"):
            methods[f"{name}@{k}"].update(k=k, clusters=clusters, clustering=clustering)
        sizes = [len(g) for g in clustering.groups]
        anonymity[str(k)] = {"clusters": len(sizes), "min_identities_per_cluster": min(sizes),
                             "max_identities_per_cluster": max(sizes), "every_cluster_at_least_k": min(sizes) >= k,
                             "merged_identities": clustering.duplicates.merged}
    return methods, anonymity


KID_RESAMPLES = 200
"""Bootstrap resamples behind each KID and fine-detail interval."""


@dataclass
class Reference:
    """Real faces of the people outside a population, as the realism measures compare against them."""

    features: np.ndarray
    """[n, d] SFace embeddings (KID's feature space)."""
    high_frequency: float
    """Their mean high_frequency_share."""
    third_parties: list[ThirdParties]
    """The training people (G's), as SFace (and dlib, when it attacks) match faces to them."""


def evaluate_population(pop: Population, reference: Reference, cfg: EvaluateConfig, generator: torch.nn.Module,
                        siamese: torch.nn.Module, attackers: dict[str, Any], detector: YuNet, sface: SFaceRecognizer,
                        device: torch.device) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every method, every attacker, every measure on one population; also the outputs (for sheets)."""
    resolution = pop.data.resolution
    sigma = cfg.blur_sigma if cfg.blur_sigma >= 0 else resolution / 16
    block = cfg.pixelate_block if cfg.pixelate_block > 0 else max(1, resolution // 8)
    methods, anonymity = _methods(pop, cfg, generator, siamese, device, sigma, block)
    probes = pop.probe_images
    expression = expression_accuracy(pop.gallery.images, pop.data.labels["expression"][pop.gallery_rows],
                                     {m: (v["probes"], v["released"][0].labels["expression"])  # the draw shown
                                      for m, v in methods.items()})
    marks_original = [detector.detect(upscale(im)) for im in probes]
    found_original = detected_landmarks(marks_original, resolution)
    marks_of: dict[int, Any] = dict(zip(map(int, pop.probe_rows), marks_original))  # split row -> YuNet
    cache: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for method, outputs in methods.items():
        log.info("attacking %s (%d probes)", method, len(outputs["probes"]))
        k = outputs["k"]
        entry = attack_population(pop, outputs["probes"], outputs["gallery"], k, attackers, cache, outputs["released"])
        # Drift from the face whose cues the output was given: its source's, or a drawn one's (each
        # split image detected once: k-Same-Aligned and kSS-GAN of one k show the same draw).
        shown = outputs.get("shown")
        if shown is not None:
            todo = [row for row in np.unique(shown) if int(row) not in marks_of]
            marks_of.update({} if not todo else zip(map(int, todo), (detector.detect(upscale(im))
                                                 for im in read_images(pop.data, np.array(todo, np.int64)))))
        marks_asked = marks_original if shown is None else [marks_of[int(row)] for row in shown]
        marks_output = [detector.detect(upscale(im)) for im in outputs["probes"]]
        drift, found = landmark_drift(marks_asked, marks_output)
        found_output = detected_landmarks(marks_output, resolution)
        given = outputs["given"]
        values = psnr(probes, outputs["probes"])
        features = sface.embed(outputs["probes"])
        kid, kid_std = kernel_inception_distance(reference.features, features, subsets=50, subset_size=200,
                                                 seed=cfg.seed)
        # Fine detail against real faces' (1: as sharp as real; averages lose it), with its interval.
        fine = high_frequency_share(outputs["probes"]) / reference.high_frequency
        resampled = np.random.default_rng(cfg.seed).choice(fine, (KID_RESAMPLES, len(fine))).mean(1)
        bound = None if k is None else 1 / k + cfg.tolerance
        # Utility kept: the pose variety inside each cluster (each person without one) against the sources'.
        groups = outputs.get("clusters", pop.probe_ids)
        variety = {"released": spread_within(outputs["released"][0].offsets, groups),
                   "sources": spread_within(methods["original"]["released"][0].offsets, groups)}
        # The poses the outputs show (landmarks found on them), against the sources' found the same way.
        shown_poses = {"released": spread_within(found_output, groups),
                       "sources": spread_within(found_original, pop.probe_ids)}
        excluded = excluded_people(pop.probe_ids, outputs["clustering"])
        base = methods[f"ksame_aligned@{k}"]["probes"] if method.startswith("kssgan") else None  # G's inputs
        leaks = {tp.name: tp.leak(outputs["probes"], probes, excluded, base) for tp in reference.third_parties}
        # And the pixels: a cluster's outputs against one person's real photos (k-Same-Pixel: 0).
        pixels = {"released": spread_within(outputs["probes"], groups),
                  "sources": spread_within(probes, pop.probe_ids)}
        entry.update({"pose_variety_px": variety, "pixel_variety": pixels, "shown_pose_variety_px": shown_poses,
            "cue_error_iod": None if given is None else cue_error(given, found_output), "third_party": leaks,
            "k": k, "k_bound": None if k is None else 1 / k,
            "within_bound": None if bound is None else entry["worst"]["rank1"] <= bound,
            "faces_detected": found, "landmark_drift_iod": drift, "ssim": float(ssim(probes, outputs["probes"]).mean()),
            "psnr_db": float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else None,
            "expression_accuracy": None if expression is None else expression[method], "kid": kid, "kid_std": kid_std,
            "kid_ci95": kid_interval(reference.features, features, resamples=KID_RESAMPLES, seed=cfg.seed),
            "high_frequency": float(fine.mean()),
            "high_frequency_ci95": [float(v) for v in np.percentile(resampled, [2.5, 97.5])]})
        results[method] = entry
    summary = {"split": pop.data.split, "identities": pop.identities, "gallery_images": len(pop.gallery_rows),
               "probes": len(pop.probe_rows), "kid_reference_images": len(reference.features), "anonymity": anonymity,
               "methods": results}
    return summary, methods


@dataclass
class Evaluation:
    """What an evaluation measures with, set up once: any number of generators can then be measured."""

    cfg: EvaluateConfig
    device: torch.device
    siamese: torch.nn.Module
    attackers: dict[str, Any]
    detector: YuNet
    sface: SFaceRecognizer
    populations: dict[str, tuple[Population, Reference]]
    """"training" and "heldout": the people attacked and the real faces they are compared with."""

    @classmethod
    def setup(cls, cfg: EvaluateConfig, gan_cfg: GanConfig, device: torch.device) -> Evaluation:
        verify_dataset(cfg.data, cfg.verify)
        siamese, _ = load_siamese(gan_cfg.siamese, device)
        attackers = {name: make_attacker(name, gan_cfg.siamese, device) for name in cfg.attackers}
        # One SFace for the attack, KID and the third-party check: each output is embedded once.
        sface = attackers["sface"].recognizer if "sface" in attackers else SFaceRecognizer()
        pops = {}
        for label, split in (("training", cfg.training_split), ("heldout", cfg.heldout_split)):
            pops[label] = pop = population_of(FaceShards(Path(cfg.data), split), cfg.gallery_per_identity,
                                              cfg.probes_per_identity)
            if pop.identities < max(cfg.ks):
                raise InputError(f"{cfg.data}: the {label} split '{split}' has {pop.identities} people with 2+ "
                                 f"images; k={max(cfg.ks)} needs at least that many (lower ks or change the split "
                                 "fractions)")
        training = FaceShards(Path(gan_cfg.data), "train")  # G's training people: who could leak into any release
        training_images = read_images(training, np.arange(len(training)))
        third_parties = [ThirdParties(name, sface if name == "sface" else attackers[name].recognizer, training_images,
                                      training.labels["identity"]) for name in ("sface", "dlib")
                         if name == "sface" or name in attackers]
        populations = {}
        for label, pop in pops.items():
            others = [FaceShards(Path(cfg.data), s) for s in SPLITS if s != pop.data.split]
            real = np.concatenate([read_images(o, np.arange(len(o))) for o in others if len(o)])
            populations[label] = (pop, Reference(sface.embed(real), float(high_frequency_share(real).mean()),
                                                 third_parties))
        return cls(cfg, device, siamese, attackers, YuNet(), sface, populations)

    def measure(self, generator: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every population's summary (evaluate_population), and the outputs of every method."""
        summaries, outputs = {}, {}
        for label, (pop, reference) in self.populations.items():
            log.info("evaluating the %s people (%s: %d people)", label, pop.data.split, pop.identities)
            summaries[label], outputs[label] = evaluate_population(
                pop, reference, self.cfg, generator, self.siamese, self.attackers, self.detector, self.sface,
                self.device)
        return summaries, outputs


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    tick = time.time()
    device = choose_device(cfg.device)
    generator, gan_cfg, weights = load_generator(cfg.gan, device)
    evaluation = Evaluation.setup(cfg, gan_cfg, device)
    out = claim_folder(cfg.out, "report")  # every input is checked: the first write
    populations, outputs = evaluation.measure(generator)
    attackers = evaluation.attackers

    release: dict[str, Any] | None = None
    if cfg.release:
        private, shipped = Path(cfg.release) / "private", Path(cfg.release) / "release"
        prepped_input = private / "input"  # a release of `input=` faces: their own sources
        secrets = SourceSecrets.of_datasets(cfg.data, *([prepped_input] if (prepped_input / "manifest.json").is_file()
                                                        else []))
        gate = json.loads((private / "gate.json").read_text()) if (private / "gate.json").is_file() else None
        promised = json.loads((shipped / "manifest.json").read_text())["k"]
        # Against the k the release promises, not the records' own claim (a record edited to k: 1).
        release = {"path": str(shipped), "clusters": check_release_clusters(private, k=promised), "k": promised,
                   "shipped": None if gate is None else gate["shipped"],
                   "gate_reasons": None if gate is None else gate["generator"].get("reasons"),
                   "forbidden_fields": scan_release(shipped, secrets)}

    photos, photo_sheets, photos_withheld = None, [], []
    if cfg.photo_masks:  # what the rest of the photo gives away, at the k of the sheets
        k, photos = sheet_k(cfg), {}
        for label, (pop, _) in evaluation.populations.items():
            photos[label], whole = photo_attacks(pop, outputs[label][f"kssgan@{k}"]["probes"], k, attackers,
                                                 cfg.photo_masks, cfg.photos_input, cfg.photo_feather)
        photo_sheets, photos_withheld = _photo_sheets(cfg, out, whole, outputs["heldout"][f"kssgan@{k}"]["clusters"],
                                                      photos["heldout"])
    sheets, withheld = _sheets(cfg, out, populations["heldout"], outputs["heldout"])
    sheets += photo_sheets
    withheld += photos_withheld
    report = {"created_by": f"kssgan-hpc {__version__}", "date": time.strftime("%Y-%m-%d"),
              "generator": str(weights), "resolution": generator.cfg.resolution,
              "attackers": {name: a.name for name, a in attackers.items()}, "tolerance": cfg.tolerance,
              "populations": populations, "photos": photos, "release": release, "contact_sheets": sheets,
              "contact_sheet_withheld": withheld, "seconds": round(time.time() - tick, 1)}
    report["headline"] = headline(report)
    report["verdicts"] = verdicts(report)
    atomic_write_json(out / "report.json", report)
    return report


def _photo_sheets(cfg: EvaluateConfig, out: Path, whole: dict[str, np.ndarray], clusters: np.ndarray,
                  measured: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The held-out people's photos with their faces replaced, per mask, under the faces' rule (the
    whole photos' worst attacker)."""
    shown = [(f"kSS-GAN photo, mask={mask}", f"photos, mask={mask}", whole[mask],
              measured["masks"][mask]["kssgan"]["whole"]["worst"], measured["k_bound"]) for mask in cfg.photo_masks]
    return _write_sheets(cfg, out, "contact_sheet_photos", shown, ("original", whole["original"]), clusters)


def sheet_k(cfg: EvaluateConfig) -> int:
    """The k the contact sheets (and the photo attacks) show: the one nearest 4."""
    return min(cfg.ks, key=lambda v: abs(v - 4))


def _sheets(cfg: EvaluateConfig, out: Path, summary: dict[str, Any],
            methods: dict[str, dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The held-out people's contact sheet at the k nearest 4."""
    k = sheet_k(cfg)
    labels = [("blur", "blur"), ("pixelate", "pixelate"), (f"k-Same-Pixel k={k}", f"ksame_pixel@{k}"),
              (f"k-Same-Aligned k={k}", f"ksame_aligned@{k}"), (f"kSS-GAN k={k}", f"kssgan@{k}")]
    shown = [(label, method, methods[method]["probes"], summary["methods"][method]["worst"],
              1 / (methods[method]["k"] or min(cfg.ks))) for label, method in labels]
    return _write_sheets(cfg, out, "contact_sheet", shown, ("SOURCE", methods["original"]["probes"]),
                         methods[f"kssgan@{k}"]["clusters"])


def _write_sheets(cfg: EvaluateConfig, out: Path, stem: str, shown: list[tuple[str, str, np.ndarray, dict, float]],
                  original: tuple[str, np.ndarray], clusters: np.ndarray) -> tuple[list[str], list[dict[str, Any]]]:
    """`stem`.png with a row per (label, method, images, worst attacker, 1/k): a row whose worst attacker
    re-identifies above 1/k + SHEET_MARGIN is withheld (grey, listed). Every row, below the originals,
    only in `stem`_SENSITIVE_originals.png (include_originals)."""
    rows, safe_rows, withheld = [], [], []
    for label, method, images, worst, bound in shown:
        rows.append((label, images))
        if worst["rank1"] > bound + SHEET_MARGIN:
            withheld.append({"method": method, "rank1": worst["rank1"], "attacker": worst["attacker"]})
            safe_rows.append((f"{label}: WITHHELD", np.full_like(images, 128)))
        else:
            safe_rows.append((label, images))
    _contact_sheet(out / f"{stem}.png", safe_rows, clusters)
    written = [str(out / f"{stem}.png")]
    if cfg.include_originals:
        _contact_sheet(out / f"{stem}_SENSITIVE_originals.png", [original, *rows], clusters)
        written.append(str(out / f"{stem}_SENSITIVE_originals.png"))
    return written, withheld


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per population and method: rank-1 per attacker, the worst, its p-value, faces, drift, SSIM, KID
    and its interval, fine detail, cue error, the variety kept inside clusters (released / sources: the
    poses declared, the poses the faces show, the pixels) and the third-party leak per recognizer."""
    rows = []
    for label, population in report["populations"].items():
        for method, entry in population["methods"].items():
            row: dict[str, Any] = {"people": label, "method": method, "1/k": entry["k_bound"]}
            row.update({name: result["rank1"] for name, result in entry["attackers"].items()})
            row.update({"worst": entry["worst"]["rank1"], "p": entry["worst"]["p_value"],
                        "faces": entry["faces_detected"], "drift": entry["landmark_drift_iod"],
                        "ssim": entry["ssim"], "kid": entry["kid"], "kid_ci95": entry["kid_ci95"],
                        "fine": entry["high_frequency"], "cue_err": entry["cue_error_iod"],
                        "variety": _ratio(entry["pose_variety_px"]),
                        "shown_variety": _ratio(entry["shown_pose_variety_px"]),
                        "pixel_variety": _ratio(entry["pixel_variety"])})
            row.update({f"leak_{name}": leak["excess"] for name, leak in entry["third_party"].items()})
            rows.append(row)
    return rows


def _ratio(variety: dict[str, float | None]) -> float | None:
    released, sources = variety["released"], variety["sources"]
    return None if released is None or not sources else released / sources


def separated(lower: list[float], higher: list[float]) -> bool | None:
    """True when the first 95 % interval lies wholly below the second, False when wholly above, None
    when they overlap (a difference inside the noise is no verdict)."""
    if lower[1] < higher[0]:
        return True
    return False if lower[0] > higher[1] else None


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What the issue of record asks of the release, answered from the figures above."""
    out: dict[str, Any] = {}
    for label, population in report["populations"].items():
        methods = population["methods"]
        ks = sorted({e["k"] for e in methods.values() if e["k"] is not None})
        for name in ("kssgan", "ksame_aligned"):
            out[f"{label}/{name}/every_attacker_within_1/k+tolerance"] = all(
                methods[f"{name}@{k}"]["within_bound"] for k in ks)
            # Per recognizer: each has its own match rule, and dlib's is for photographs (it "matches"
            # blurred and averaged faces too): one verdict must not hide the other.
            for recognizer in methods[f"{name}@{ks[0]}"]["third_party"]:
                out[f"{label}/{name}/third_party_leak_within_tolerance/{recognizer}"] = all(
                    methods[f"{name}@{k}"]["third_party"][recognizer]["excess"] <= report["tolerance"] for k in ks)
            out[f"{label}/{name}/faces_detected_min"] = min(methods[f"{name}@{k}"]["faces_detected"] for k in ks)
        for k in ks:
            gan, pixel, aligned = methods[f"kssgan@{k}"], methods[f"ksame_pixel@{k}"], methods[f"ksame_aligned@{k}"]
            out[f"{label}/k={k}/kssgan_beats_ksame_pixel_on_kid"] = separated(gan["kid_ci95"], pixel["kid_ci95"])
            out[f"{label}/k={k}/kssgan_sharper_than_ksame_pixel"] = separated(pixel["high_frequency_ci95"],
                                                                             gan["high_frequency_ci95"])
            out[f"{label}/k={k}/kssgan_beats_ksame_pixel_on_drift"] = (
                None if gan["landmark_drift_iod"] is None or pixel["landmark_drift_iod"] is None
                else gan["landmark_drift_iod"] < pixel["landmark_drift_iod"])
            out[f"{label}/k={k}/kssgan_beats_ksame_aligned_on_kid"] = separated(gan["kid_ci95"], aligned["kid_ci95"])
    return out


def format_headline(report: dict[str, Any]) -> str:
    rows = report["headline"]
    columns = list(rows[0])
    width = {c: max(len(c), 6) for c in columns}
    width["method"] = max(len(r["method"]) for r in rows)

    def cell(value: Any, c: str) -> str:
        if isinstance(value, float):
            text = f"{value:.0e}" if c == "p" and value < 0.001 else f"{value:.3f}"
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
        else:
            text = "-" if value is None else str(value)
        return f"{text:>{width[c]}}"

    lines = ["  ".join(f"{c:>{width[c]}}" for c in columns)]
    lines += ["  ".join(cell(row[c], c) for c in columns) for row in rows]
    return "\n".join(lines)
