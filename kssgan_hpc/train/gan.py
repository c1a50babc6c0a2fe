"""k-Same-Siamese-GAN: G(cluster's k-Same-Aligned base face, source's declared cues, z) against D.

G never receives the source image: its base face is its cluster's template posed on the source's
landmarks, its cues are those landmarks and the expression/pose labels, and z. One step = D's phase
over every micro-batch of the window (adversarial + expression head + lazy R1), one update; then
G's (D frozen and called unwrapped: adversarial + pull to the cluster's surrogate in the frozen
Siamese's space + push from the source identity + expression + L1 to its own base), one update;
then the EMA of G. The losses are train/loss.py's GanLoss. At every checkpoint rank 0 attacks the
EMA generator on held-out people (train/selection.py) and keeps the newest one that passes.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kssgan_hpc.artefacts import load_siamese
from kssgan_hpc.checkpoints import DISCRIMINATOR, EMA_GENERATOR, GENERATOR
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.pixels import image_grid, to_uint8, to_unit
from kssgan_hpc.data.samplers import DistributedShardSampler
from kssgan_hpc.distributed import all_reduce
from kssgan_hpc.engine.base import Engine
from kssgan_hpc.ksame.build import KSame
from kssgan_hpc.ksame.records import ksame_from_file
from kssgan_hpc.models import Discriminator, Generator
from kssgan_hpc.train.loss import GanLoss, MicroBatch
from kssgan_hpc.train.run import (Run, batches_forever, keyed_generator, loader_worker_init, model_from_data,
                                  seed_everything)
from kssgan_hpc.train.selection import CheckpointSelector

log = logging.getLogger(__name__)


def train_gan(cfg: GanConfig) -> Path:
    """Train (or resume) the de-identifying generator; returns the run folder."""
    run = Run(cfg, "gan")
    engine = run.engine
    try:
        data = FaceShards(Path(cfg.data), "train")
        model_from_data(data, cfg.model, cfg.data)
        clustering = ksame_from_file(cfg.clusters, data, cfg.k)  # the training people's clusters and base faces
        surrogates = torch.from_numpy(clustering.surrogates).to(engine.device)
        siamese, _ = load_siamese(cfg.siamese, engine.device)

        ema = _prepare_networks(cfg, engine, data.manifest["vocab"])
        sampler = DistributedShardSampler(data, engine.world_size, engine.rank, seed=cfg.engine.seed, drop_last=True)
        seed_everything(cfg.engine.seed + 1000 * (engine.rank + 1))
        selector = (CheckpointSelector(cfg, run.out, siamese, engine.device)
                    if engine.is_main and cfg.select_split else None)

        at = run.begin(sampler)  # every input is loaded and checked: the run folder is written from here on
        step = at.step
        if step > 0:  # resumed: the EMA generator comes back with the checkpoint
            ema.load_state_dict(at.extra[EMA_GENERATOR])
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=collate_faces, worker_init_fn=loader_worker_init, drop_last=True)
        batches = batches_forever(loader, sampler, at.sampler["consumed"],
                                  count=lambda batch: len(batch[0]))  # the sampler counts samples
        losses = GanLoss(cfg, engine, siamese, run.all_finite)
        tick, images_seen = time.perf_counter(), 0

        while step < cfg.steps:
            window, labels, consumed = [], None, 0
            for micro in range(cfg.engine.accumulate):
                (images, labels), consumed = next(batches)
                images_seen += len(images)
                window.append(MicroBatch(
                    real=engine.cast(to_unit(images).to(engine.device)),
                    inputs=generator_inputs(cfg, engine, clustering, labels, step, micro),
                    target=surrogates[torch.from_numpy(clustering.clusters_of(labels["identity"])).to(engine.device)],
                    expression=labels["expression"].to(engine.device), micro=micro))
            stats, applied = _train_step(cfg, engine, losses, window, step)
            if applied[GENERATOR]:
                # Ramped decay: early on the average follows G closely instead of its random init.
                _update_ema(ema, engine.unwrap(GENERATOR), min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1

            if step % cfg.log_every == 0 or step == cfg.steps:
                _log_metrics(run, cfg, step, stats, applied, images_seen, tick)
                tick, images_seen = time.perf_counter(), 0
            if engine.is_main and (step % cfg.image_every == 0 or step == cfg.steps):
                _log_images(run, cfg, step, ema, window[-1], labels, clustering)
            if selector is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                selector.measure(step, ema, run)
            run.end_step(step, sampler=sampler.state_dict(consumed), models=(GENERATOR, DISCRIMINATOR),
                         extra=lambda: {EMA_GENERATOR: ema.state_dict()})
        return run.out
    finally:
        run.close()


def _prepare_networks(cfg: GanConfig, engine: Engine, vocab: dict[str, list[str]]) -> torch.nn.Module:
    """G and D, each prepared with its Adam, identical on every rank (seeded); returns G's EMA copy."""
    seed_everything(cfg.engine.seed)
    generator = Generator(cfg.model, num_expressions=len(vocab["expression"]), num_poses=len(vocab["pose"]))
    discriminator = Discriminator(cfg.model, num_expressions=len(vocab["expression"]))
    ema = copy.deepcopy(generator).eval().requires_grad_(False).to(engine.device)
    betas = (cfg.beta1, cfg.beta2)
    engine.prepare(GENERATOR, generator, torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas))
    engine.prepare(DISCRIMINATOR, discriminator, torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas))
    return ema


def generator_inputs(cfg: GanConfig, engine: Engine, clustering: KSame, labels: dict[str, torch.Tensor], step: int,
                     micro: int) -> tuple[torch.Tensor, ...]:
    """What G may see of a source: its cluster's base face posed on its pose landmarks, the cues, z."""
    landmarks = torch.from_numpy(clustering.pose_landmarks(labels["identity"], labels["landmarks"]))
    base = clustering.base_faces(labels["identity"], landmarks, engine.device)
    z = torch.randn(len(base), cfg.model.z_dim, generator=keyed_generator(cfg.engine.seed, engine.rank, step,
                                                                           micro)).to(engine.device)
    return (engine.cast(base), landmarks.to(engine.device), labels["expression"].to(engine.device),
            labels["pose"].to(engine.device), engine.cast(z))


def _train_step(cfg: GanConfig, engine: Engine, losses: GanLoss, window: list[MicroBatch],
                step: int) -> tuple[dict[str, float], dict[str, bool]]:
    """Phases as in StyleGAN: D over every micro-batch of the window, one update; then G with D frozen.
    Returns the window's mean scalars and, per network, whether its update was applied."""
    r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
    stats: dict[str, list[dict[str, Any]]] = {DISCRIMINATOR: [], GENERATOR: []}
    applied: dict[str, bool] = {}
    d_plain = engine.unwrap(DISCRIMINATOR)
    for name, phase in ((DISCRIMINATOR, "D"), (GENERATOR, "G")):
        d_plain.requires_grad_(name == DISCRIMINATOR)
        for batch in window:
            with engine.micro_batch(name):
                stats[name].append(losses.accumulate_gradients(phase, batch, step + 1, r1=r1))
            applied[name] = engine.step(name, skip=not any(x["ok"] for x in stats[name]))
    d_plain.requires_grad_(True)
    every = stats[DISCRIMINATOR] + stats[GENERATOR]
    if not all(x["ok"] for x in every):
        log.warning("step %d: non-finite loss on some rank, its gradients dropped on all ranks", step + 1)
    for name in (DISCRIMINATOR, GENERATOR):
        if any(x["ok"] for x in stats[name]) and not applied[name]:
            # The engine saw inf/NaN gradients (an fp16 overflow) on every rank.
            log.warning("step %d: %s gradient overflow, step skipped; loss scale now %s",
                        step + 1, name.upper(), engine.loss_scale(name))
    means = {key: float(np.mean([x[key] for x in part])) for part in stats.values() for key in part[0] if key != "ok"}
    return means, applied


def _log_metrics(run: Run, cfg: GanConfig, step: int, stats: dict[str, float], applied: dict[str, bool],
                 images: int, since: float) -> None:
    """Collective: the step's losses, gradient norms, skips and throughput (`images` since perf_counter
    `since`, the wait at this reduction included), reduced over ranks and logged."""
    engine = run.engine
    metrics = all_reduce({
        **stats, "grad_norm/g": engine.grad_norm(GENERATOR), "grad_norm/d": engine.grad_norm(DISCRIMINATOR),
        "skipped/g": float(not applied[GENERATOR]), "skipped/d": float(not applied[DISCRIMINATOR])})
    metrics.update(run.throughput(images, time.perf_counter() - since, (GENERATOR, DISCRIMINATOR)),
                   **{"lr/g": cfg.lr_g, "lr/d": cfg.lr_d})
    run.log_scalars(step, metrics)
    log.info("step %d/%d  G %.3f  D %.3f  cos(surrogate) %.3f  cos(source) %.3f", step, cfg.steps,
             metrics["loss/g_total"], metrics["loss/d_total"],
             metrics["identity/cos_to_surrogate"], metrics["identity/cos_to_source"])


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def _log_images(run: Run, cfg: GanConfig, step: int, ema: torch.nn.Module, batch: MicroBatch,
                labels: dict[str, torch.Tensor], clustering: KSame) -> None:
    """Rank 0: k-Same-Pixel | k-Same-Aligned base | kSS-GAN (EMA G); sources only with log_originals."""
    real, inputs = batch.real, batch.inputs
    count = min(8, len(real))
    inputs = tuple(x[:count].float() for x in inputs[:2]) + tuple(x[:count] for x in inputs[2:4]) + \
        (inputs[4][:count].float(),)
    output = ema(*inputs).float()
    pixel = torch.from_numpy(clustering.pixel[clustering.clusters_of(labels["identity"][:count])])
    rows = [pixel, to_uint8(inputs[0]).cpu(), to_uint8(output).cpu()]
    if cfg.log_originals:
        rows.insert(0, to_uint8(real[:count].float()).cpu())
    grid = image_grid(torch.cat(rows), columns=count)
    run.tb.add_image("deid/" + ("source|" if cfg.log_originals else "") + "ksame_pixel|ksame_aligned|kssgan", grid,
                     step)
