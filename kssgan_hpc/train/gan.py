"""k-Same-Siamese-GAN: G(face, cluster surrogate) against D, identity losses from the frozen Siamese.

One step = a D step (adversarial + expression head + lazy R1, one summed backward) then a G step
(D frozen and called unwrapped: adversarial + pull to the surrogate + push from the source +
expression + low-frequency L1), then the EMA of G.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.samplers import DistributedShardSampler
from kssgan_hpc.engine.base import all_reduce
from kssgan_hpc.ksame.build import load_clusters, load_siamese
from kssgan_hpc.models import Discriminator, Generator
from kssgan_hpc.train.run import (
    Run,
    batches_forever,
    check_data_matches,
    image_grid,
    loader_worker_init,
    seed_everything,
    to_uint8,
    to_unit,
)

log = logging.getLogger(__name__)


def d_adversarial(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_adversarial(fake: torch.Tensor, kind: str) -> torch.Tensor:
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def expression_loss(logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled images only (-1 = unknown); 0 where nothing is labelled."""
    known = labels >= 0
    if logits is None or not bool(known.any()):
        return torch.zeros((), device=labels.device)
    return F.cross_entropy(logits.float()[known], labels[known])


class SurrogateTable:
    """identity -> (cluster, surrogate embedding), from clusters.json."""

    def __init__(self, clusters: dict, device: torch.device) -> None:
        self.k = clusters["k"]
        size = max(i for c in clusters["clusters"] for i in c["identities"]) + 1
        self.cluster_of = torch.full((size,), -1, dtype=torch.long)
        for c in clusters["clusters"]:
            self.cluster_of[c["identities"]] = c["cluster"]
        self.targets = torch.tensor([c["surrogate"] for c in clusters["clusters"]], dtype=torch.float32, device=device)

    def lookup(self, identities: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        if int(identities.max()) >= len(self.cluster_of) or bool((self.cluster_of[identities] < 0).any()):
            raise ValueError(f"{source}: an identity of the training data has no cluster; rerun `kssgan cluster`")
        clusters = self.cluster_of[identities]
        return clusters, self.targets[clusters.to(self.targets.device)]


def train_gan(cfg: GanConfig) -> Path:
    """Train (or resume) the de-identifying generator; returns the run folder."""
    run = Run(cfg, "gan")
    engine = run.engine
    try:
        data = FaceShards(Path(cfg.data), "train")
        check_data_matches(data, cfg.model, cfg.data)
        table = SurrogateTable(load_clusters(cfg.clusters), engine.device)
        pixel_path = Path(cfg.clusters).with_name(Path(cfg.clusters).stem + "-pixel.safetensors")
        pixel_faces = load_file(pixel_path)["faces"] if pixel_path.is_file() else None
        siamese, _ = load_siamese(cfg.siamese, engine.device)

        seed_everything(cfg.engine.seed)  # identical initial weights on every rank
        generator = Generator(cfg.model)
        discriminator = Discriminator(cfg.model, num_expressions=len(data.manifest["vocab"]["expression"]))
        ema = copy.deepcopy(generator).eval().requires_grad_(False).to(engine.device)
        betas = (cfg.beta1, cfg.beta2)
        engine.prepare("g", generator, torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas))
        engine.prepare("d", discriminator, torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas))
        sampler = DistributedShardSampler(data, engine.world_size, engine.rank, seed=cfg.engine.seed, drop_last=True)
        seed_everything(cfg.engine.seed + 1000 * (engine.rank + 1))

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

        def d_micro(real: torch.Tensor, target_in: torch.Tensor, expression: torch.Tensor, r1_step: bool) -> dict:
            """D's losses on one micro-batch, backward included (inside engine.micro_batch)."""
            with torch.no_grad(), engine.autocast():
                fake = engine.model("g")(real, target_in)
            with engine.autocast():
                logits, expr_logits = engine.model("d")(torch.cat([real, fake.detach()]))
            logits = logits.float()
            real_logits, fake_logits = logits[: len(real)], logits[len(real):]
            d_adv = d_adversarial(real_logits, fake_logits, cfg.adversarial)
            d_expr = expression_loss(None if expr_logits is None else expr_logits[: len(real)], expression)
            loss = d_adv + cfg.w_expression * d_expr
            r1 = torch.zeros((), device=engine.device)
            if r1_step:
                # Its own pass through the plain module: DeepSpeed's backward hooks on the engine's
                # outputs must only see the one backward below. The gradient is taken of unscaled
                # logits, in fp32, so the penalty is right under any loss scale.
                real_in = real.detach().requires_grad_(True)
                with engine.autocast():
                    r1_logits, _ = d_plain(real_in)
                (grad,) = torch.autograd.grad(r1_logits.float().sum(), real_in, create_graph=True)
                r1 = grad.float().pow(2).sum(dim=[1, 2, 3]).mean()
                loss = loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
            ok = run.all_finite(loss, step + 1)
            engine.backward("d", loss) if ok else engine.zero_backward("d")
            return {"ok": ok, "loss/d_adversarial": d_adv.item(), "loss/d_expression": d_expr.item(),
                    "loss/r1": r1.item(), "loss/d_total": loss.item(), "d/real_score": real_logits.mean().item(),
                    "d/fake_score": fake_logits.mean().item()}

        def g_micro(real: torch.Tensor, target: torch.Tensor, target_in: torch.Tensor,
                    expression: torch.Tensor) -> dict:
            """G's losses on one micro-batch against the frozen, unwrapped D, backward included."""
            with engine.autocast():
                fake = engine.model("g")(real, target_in)
                fake_logits, fake_expr = d_plain(fake)
                fake_embedding = siamese(fake.float())  # the Siamese is an fp32 module under every engine
                with torch.no_grad():
                    source_embedding = siamese(real.float())
            fake_embedding = fake_embedding.float()
            to_target = 1 - (fake_embedding * target).sum(1)
            to_source = (fake_embedding * source_embedding.float()).sum(1)
            g_adv = g_adversarial(fake_logits.float(), cfg.adversarial)
            id_pull = to_target.mean()
            id_push = F.relu(to_source - cfg.id_margin).mean()
            g_expr = expression_loss(fake_expr, expression)
            lowfreq = F.l1_loss(F.adaptive_avg_pool2d(fake.float(), cfg.lowfreq_size),
                                F.adaptive_avg_pool2d(real.float(), cfg.lowfreq_size))
            loss = (cfg.w_adv * g_adv + cfg.w_id_pull * id_pull + cfg.w_id_push * id_push
                    + cfg.w_expression * g_expr + cfg.w_lowfreq * lowfreq)
            ok = run.all_finite(loss, step + 1)
            engine.backward("g", loss) if ok else engine.zero_backward("g")
            return {"ok": ok, "loss/g_adversarial": g_adv.item(), "loss/id_pull": id_pull.item(),
                    "loss/id_push": id_push.item(), "loss/g_expression": g_expr.item(),
                    "loss/lowfreq": lowfreq.item(), "loss/g_total": loss.item(),
                    "identity/cos_to_surrogate": (1 - to_target).mean().item(),
                    "identity/cos_to_source": to_source.mean().item()}

        while step < cfg.steps:
            # Phases as in StyleGAN: D over every micro-batch of the window, one update; then G.
            window = []
            for _ in range(cfg.engine.accumulate):
                (images, labels), consumed = next(batches)
                images_seen += len(images)
                _, target = table.lookup(labels["identity"], cfg.data)
                window.append((engine.cast(to_unit(images).to(engine.device)), target, engine.cast(target),
                               labels["expression"].to(engine.device)))
            r1_step = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
            d_stats, g_stats = [], []
            for real, _, target_in, expression in window:
                with engine.micro_batch("d"):
                    d_stats.append(d_micro(real, target_in, expression, r1_step))
                d_applied = engine.step("d", skip=not any(x["ok"] for x in d_stats))
            d_plain.requires_grad_(False)
            for real, target, target_in, expression in window:
                with engine.micro_batch("g"):
                    g_stats.append(g_micro(real, target, target_in, expression))
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
                real, target = window[-1][0], window[-1][1]
                _log_images(run, cfg, step, ema, siamese, real, target, labels, table, pixel_faces)
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
def _log_images(run: Run, cfg: GanConfig, step: int, ema: torch.nn.Module, siamese: torch.nn.Module,
                real: torch.Tensor, target: torch.Tensor, labels: dict, table: SurrogateTable,
                pixel_faces: torch.Tensor | None) -> None:
    """Rank 0: k-Same-Pixel surrogate | de-identified output (EMA G); sources only with log_originals."""
    count = min(8, len(real))
    source = real[:count].float()
    output = ema(source, target[:count]).float()
    rows = []
    if pixel_faces is not None:
        clusters, _ = table.lookup(labels["identity"][:count], cfg.data)
        rows.append(pixel_faces[clusters].to(torch.uint8))
    rows.append(to_uint8(output).cpu())
    if cfg.log_originals:
        rows.insert(0, to_uint8(source).cpu())
    grid = image_grid(torch.cat(rows), columns=count)
    run.tb.add_image("deid/" + ("source|" if cfg.log_originals else "") + "ksame_pixel|kssgan", grid, step)
    embedding = siamese(output)
    run.tb.add_histogram("identity/distance_to_surrogate", 1 - (embedding * target[:count]).sum(1), step)
    run.tb.add_histogram("identity/distance_to_source", 1 - (embedding * siamese(source)).sum(1), step)
