"""k-Same-Siamese-GAN: G(cluster's k-Same-Aligned base face, source's declared cues, z) against D.

G never receives the source image: its base face is its cluster's template posed on the source's
landmarks, its cues are those landmarks and the expression/pose labels, and z. One step = a D step
(adversarial + expression head + lazy R1, one summed backward) then a G step (D frozen and called
unwrapped: adversarial + pull to the cluster's surrogate in the frozen Siamese's space + push from
the source identity + expression + L1 to its own base at low resolution; train/loss.py), then the
EMA of G. At every checkpoint rank 0 attacks the EMA generator on held-out people (the release
gate's measurement, release/gate.py) and keeps the best one that passes in out/selected/.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from kssgan_hpc.artefacts import load_siamese
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.samplers import DistributedShardSampler
from kssgan_hpc.engine.base import all_reduce
from kssgan_hpc.ksame.build import KSame, ksame_from_file
from kssgan_hpc.models import Discriminator, Generator
from kssgan_hpc.release.gate import CheckpointSelector
from kssgan_hpc.train import loss
from kssgan_hpc.train.run import (
    Run,
    batches_forever,
    image_grid,
    loader_worker_init,
    model_from_data,
    seed_everything,
    to_uint8,
    to_unit,
)

log = logging.getLogger(__name__)


def train_gan(cfg: GanConfig) -> Path:
    """Train (or resume) the de-identifying generator; returns the run folder."""
    run = Run(cfg, "gan")
    engine = run.engine
    try:
        data = FaceShards(Path(cfg.data), "train")
        model_from_data(data, cfg.model, cfg.data)
        population = ksame_from_file(cfg.clusters, data, cfg.k)  # the training people's clusters and base faces
        surrogates = torch.from_numpy(population.surrogates).to(engine.device)
        siamese, _ = load_siamese(cfg.siamese, engine.device)
        vocab = data.manifest["vocab"]

        seed_everything(cfg.engine.seed)  # identical initial weights on every rank
        generator = Generator(cfg.model, num_expressions=len(vocab["expression"]), num_poses=len(vocab["pose"]))
        discriminator = Discriminator(cfg.model, num_expressions=len(vocab["expression"]))
        ema = copy.deepcopy(generator).eval().requires_grad_(False).to(engine.device)
        betas = (cfg.beta1, cfg.beta2)
        engine.prepare("g", generator, torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas))
        engine.prepare("d", discriminator, torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas))
        sampler = DistributedShardSampler(data, engine.world_size, engine.rank, seed=cfg.engine.seed, drop_last=True)
        seed_everything(cfg.engine.seed + 1000 * (engine.rank + 1))
        selector = (CheckpointSelector(cfg, run.out, siamese, engine.device)
                    if engine.is_main and cfg.select_split else None)
        run.start()  # every input is loaded and checked: now the run folder is written

        step, consumed = 0, 0
        resumed = run.resume()
        if resumed is not None:
            step, consumed = resumed.step, resumed.sampler["consumed"]
            sampler.load_state_dict(resumed.sampler)
            ema.load_state_dict(resumed.extra["ema_g"])
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=collate_faces, worker_init_fn=loader_worker_init, drop_last=True)
        batches = batches_forever(loader, sampler, consumed, count=lambda batch: len(batch[0]))  # counts samples
        d_plain = engine.unwrap("d")
        tick, images_seen = time.perf_counter(), 0

        def g_inputs(labels: dict, micro: int) -> tuple[torch.Tensor, ...]:
            """What G may see of a source: its cluster's base face on its landmarks, the cues, z."""
            landmarks = torch.from_numpy(population.pose_landmarks(labels["identity"], labels["landmarks"]))
            base = population.base_faces(labels["identity"], landmarks, engine.device)
            # z from (seed, rank, step, micro-batch), not the global RNG, which a resumed DataLoader
            # also draws from: a resumed run must see the same noise as an uninterrupted one.
            noise = torch.Generator().manual_seed(int(np.random.SeedSequence(
                [cfg.engine.seed, engine.rank, step, micro]).generate_state(1, np.uint64)[0] >> 1))
            z = torch.randn(len(base), cfg.model.z_dim, generator=noise).to(engine.device)
            return (engine.cast(base), landmarks.to(engine.device), labels["expression"].to(engine.device),
                    labels["pose"].to(engine.device), engine.cast(z))

        def d_micro(real: torch.Tensor, inputs: tuple, expression: torch.Tensor, r1_step: bool) -> dict:
            """D's losses on one micro-batch, backward included (inside engine.micro_batch)."""
            with torch.no_grad(), engine.autocast():
                fake = engine.model("g")(*inputs)
            with engine.autocast():
                logits, expr_logits = engine.model("d")(torch.cat([real, fake.detach()]))
            logits = logits.float()
            real_logits, fake_logits = logits[: len(real)], logits[len(real):]
            d_adv = loss.d_adversarial(real_logits, fake_logits, cfg.adversarial)
            d_expr = loss.expression_loss(None if expr_logits is None else expr_logits[: len(real)], expression)
            total = d_adv + cfg.w_expression * d_expr
            r1 = torch.zeros((), device=engine.device)
            if r1_step:
                # Its own pass through the plain module: DeepSpeed's backward hooks on the engine's
                # outputs must only see the one backward below. The gradient is taken of unscaled
                # logits, in fp32, so the penalty is right under any loss scale.
                real_in = real.detach().requires_grad_(True)
                with engine.autocast():
                    r1_logits, _ = d_plain(real_in)
                r1 = loss.r1_penalty(r1_logits, real_in)
                total = total + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
            ok = run.all_finite(total, step + 1)
            engine.backward("d", total) if ok else engine.zero_backward("d")
            return {"ok": ok, "loss/d_adversarial": d_adv.item(), "loss/d_expression": d_expr.item(),
                    "loss/r1": r1.item(), "loss/d_total": total.item(), "d/real_score": real_logits.mean().item(),
                    "d/fake_score": fake_logits.mean().item()}

        def g_micro(real: torch.Tensor, inputs: tuple, target: torch.Tensor, expression: torch.Tensor) -> dict:
            """G's losses on one micro-batch against the frozen, unwrapped D, backward included."""
            with engine.autocast():
                fake = engine.model("g")(*inputs)
                fake_logits, fake_expr = d_plain(fake)
                fake_embedding = siamese(fake.float())  # the Siamese is an fp32 module under every engine
                with torch.no_grad():
                    source_embedding = siamese(real.float())
            g_adv = loss.g_adversarial(fake_logits.float(), cfg.adversarial)
            id_pull = loss.identity_pull(fake_embedding, target)
            id_push = loss.identity_push(fake_embedding, source_embedding, cfg.id_margin)
            g_expr = loss.expression_loss(fake_expr, expression)
            to_base = loss.base_consistency(fake, inputs[0], cfg.base_size)
            total = (cfg.w_adv * g_adv + cfg.w_id_pull * id_pull + cfg.w_id_push * id_push
                     + cfg.w_expression * g_expr + cfg.w_base * to_base)
            ok = run.all_finite(total, step + 1)
            engine.backward("g", total) if ok else engine.zero_backward("g")
            cos_source = (fake_embedding.float() * source_embedding.float()).sum(1).mean()
            return {"ok": ok, "loss/g_adversarial": g_adv.item(), "loss/id_pull": id_pull.item(),
                    "loss/id_push": id_push.item(), "loss/g_expression": g_expr.item(),
                    "loss/base_l1": to_base.item(), "loss/g_total": total.item(),
                    "identity/cos_to_surrogate": 1 - id_pull.item(), "identity/cos_to_source": cos_source.item()}

        while step < cfg.steps:
            # Phases as in StyleGAN: D over every micro-batch of the window, one update; then G.
            window = []
            for micro in range(cfg.engine.accumulate):
                (images, labels), consumed = next(batches)
                images_seen += len(images)
                target = surrogates[torch.from_numpy(population.clusters_of(labels["identity"])).to(engine.device)]
                window.append((engine.cast(to_unit(images).to(engine.device)), g_inputs(labels, micro), target,
                               labels["expression"].to(engine.device)))
            r1_step = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
            d_stats, g_stats = [], []
            for real, inputs, _, expression in window:
                with engine.micro_batch("d"):
                    d_stats.append(d_micro(real, inputs, expression, r1_step))
                d_applied = engine.step("d", skip=not any(x["ok"] for x in d_stats))
            d_plain.requires_grad_(False)
            for real, inputs, target, expression in window:
                with engine.micro_batch("g"):
                    g_stats.append(g_micro(real, inputs, target, expression))
                g_applied = engine.step("g", skip=not any(x["ok"] for x in g_stats))
            d_plain.requires_grad_(True)
            stats = {k: float(np.mean([x[k] for x in d_stats])) for k in d_stats[0] if k != "ok"}
            stats.update({k: float(np.mean([x[k] for x in g_stats])) for k in g_stats[0] if k != "ok"})
            if not all(x["ok"] for x in d_stats + g_stats):
                log.warning("step %d: non-finite loss on some rank, its gradients dropped on all ranks", step + 1)
            for name, ok, applied in (("d", any(x["ok"] for x in d_stats), d_applied),
                                      ("g", any(x["ok"] for x in g_stats), g_applied)):
                if ok and not applied:  # the engine saw inf/NaN gradients (fp16 overflow) on every rank
                    log.warning("step %d: %s gradient overflow, step skipped; loss scale now %s",
                                step + 1, name.upper(), engine.loss_scale(name))
            if g_applied:
                # Ramped decay: early on the average follows G closely instead of its random init.
                _update_ema(ema, engine.unwrap("g"), min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1

            # -------------------------------------------------------------------- logging, checkpoints
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = all_reduce({
                    **stats, "grad_norm/g": engine.grad_norm("g"), "grad_norm/d": engine.grad_norm("d"),
                    "skipped/g": 0.0 if g_applied else 1.0, "skipped/d": 0.0 if d_applied else 1.0,
                })
                metrics.update(run.throughput(images_seen, time.perf_counter() - tick, ("g", "d")),
                               **{"lr/g": cfg.lr_g, "lr/d": cfg.lr_d})
                run.log_scalars(step, metrics)
                log.info("step %d/%d  G %.3f  D %.3f  cos(surrogate) %.3f  cos(source) %.3f", step, cfg.steps,
                         metrics["loss/g_total"], metrics["loss/d_total"],
                         metrics["identity/cos_to_surrogate"], metrics["identity/cos_to_source"])
                tick, images_seen = time.perf_counter(), 0
            if engine.is_main and (step % cfg.image_every == 0 or step == cfg.steps):
                real, inputs = window[-1][0], window[-1][1]
                _log_images(run, cfg, step, ema, real, inputs, labels, population)
            if selector is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                selector.measure(step, ema, run)
            run.end_step(step, sampler=sampler.state_dict(consumed), models=("g", "d"),
                         extra=lambda: {"ema_g": ema.state_dict()})
        return run.out
    finally:
        run.close()


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def _log_images(run: Run, cfg: GanConfig, step: int, ema: torch.nn.Module, real: torch.Tensor, inputs: tuple,
                labels: dict, population: KSame) -> None:
    """Rank 0: k-Same-Pixel | k-Same-Aligned base | kSS-GAN (EMA G); sources only with log_originals."""
    count = min(8, len(real))
    inputs = tuple(x[:count].float() for x in inputs[:2]) + tuple(x[:count] for x in inputs[2:4]) + \
        (inputs[4][:count].float(),)
    output = ema(*inputs).float()
    pixel = torch.from_numpy(population.pixel[population.clusters_of(labels["identity"][:count])])
    rows = [pixel, to_uint8(inputs[0]).cpu(), to_uint8(output).cpu()]
    if cfg.log_originals:
        rows.insert(0, to_uint8(real[:count].float()).cpu())
    grid = image_grid(torch.cat(rows), columns=count)
    run.tb.add_image("deid/" + ("source|" if cfg.log_originals else "") + "ksame_pixel|ksame_aligned|kssgan", grid,
                     step)
