"""Siamese identity network: contrastive training on P x K identity batches, verification on held-out people."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from kssgan_hpc.checkpoints import SIAMESE
from kssgan_hpc.config.train import SiameseConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.pixels import to_unit
from kssgan_hpc.data.samplers import IdentityBalancedBatchSampler
from kssgan_hpc.distributed import all_reduce, barrier
from kssgan_hpc.models import SiameseEncoder, siamese_embeddings
from kssgan_hpc.train.run import Run, batches_forever, loader_worker_init, model_from_data, seed_everything

log = logging.getLogger(__name__)


def contrastive_loss(embeddings: torch.Tensor, identities: torch.Tensor, margin: float) -> tuple[torch.Tensor, dict]:
    """Over every pair in the batch: same identity -> cosine distance^2; different -> relu(margin - distance)^2."""
    distance = 1.0 - embeddings @ embeddings.T
    same = identities[:, None] == identities[None, :]
    off_diagonal = ~torch.eye(len(identities), dtype=torch.bool, device=embeddings.device)
    positive = same & off_diagonal
    negative = ~same
    loss = (distance[positive].pow(2).mean() + torch.relu(margin - distance[negative]).pow(2).mean())
    stats = {"distance/positive": distance[positive].mean().item(),
             "distance/negative": distance[negative].mean().item()}
    return loss, stats


@torch.no_grad()
def verification(model: torch.nn.Module, data: FaceShards, device: torch.device, limit: int = 2000) -> dict[str, float]:
    """All pairs among up to `limit` held-out images: accuracy at the best threshold and the equal error rate."""
    model.eval()
    count = min(len(data), limit)
    embeddings, identities = [], []
    for start in range(0, count, 64):
        images, labels = collate_faces(data.__getitems__(list(range(start, min(start + 64, count)))))
        embeddings.append(siamese_embeddings(model, images, device))
        identities.append(labels["identity"])
    model.train()
    emb, ids = torch.cat(embeddings), torch.cat(identities)
    upper = torch.triu_indices(len(ids), len(ids), offset=1)
    similarity = (emb @ emb.T)[upper[0], upper[1]].numpy()
    same = (ids[upper[0]] == ids[upper[1]]).numpy()
    return verification_metrics(similarity, same)


def verification_metrics(similarity: np.ndarray, same: np.ndarray) -> dict[str, float]:
    order = np.argsort(-similarity, kind="stable")
    same = same[order].astype(np.float64)
    positives, negatives = same.sum(), (1 - same).sum()
    if positives == 0 or negatives == 0:
        return {"val/accuracy": float("nan"), "val/eer": float("nan")}
    true_accept = np.cumsum(same) / positives  # threshold just below each score
    false_accept = np.cumsum(1 - same) / negatives
    false_reject = 1 - true_accept
    eer_index = int(np.argmin(np.abs(false_accept - false_reject)))
    accuracy = (true_accept * positives + (1 - false_accept) * negatives) / (positives + negatives)
    return {"val/accuracy": float(accuracy.max()),
            "val/eer": float((false_accept[eer_index] + false_reject[eer_index]) / 2)}


def train_siamese(cfg: SiameseConfig) -> Path:
    """Train (or resume) the Siamese encoder; returns the run folder."""
    run = Run(cfg, "siamese")
    engine = run.engine
    try:
        train = FaceShards(Path(cfg.data), "train")
        val = FaceShards(Path(cfg.data), "val")
        model_from_data(train, cfg.model, cfg.data)
        seed_everything(cfg.engine.seed)  # identical initial weights on every rank
        model = SiameseEncoder(cfg.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        engine.prepare(SIAMESE, model, optimizer)
        sampler = IdentityBalancedBatchSampler(train.labels["identity"], cfg.identities_per_batch,
                                               cfg.images_per_identity, num_replicas=engine.world_size,
                                               rank=engine.rank, seed=cfg.engine.seed)
        seed_everything(cfg.engine.seed + 1000 * (engine.rank + 1))
        at = run.begin(sampler)  # every input is loaded and checked: the run folder is written from here on
        step, consumed = at.step, at.sampler["consumed"]
        loader = DataLoader(train, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_faces,
                            worker_init_fn=loader_worker_init)
        batches = batches_forever(loader, sampler, consumed, count=lambda batch: 1)  # the sampler counts batches
        tick, images_seen = time.perf_counter(), 0
        window_finite = False  # any finite micro-batch in the current accumulation window
        while step < cfg.steps:
            (images, labels), consumed = next(batches)
            x = engine.cast(to_unit(images).to(engine.device))
            with engine.micro_batch(SIAMESE):
                with engine.autocast():
                    embeddings = engine.model(SIAMESE)(x)
                loss, stats = contrastive_loss(embeddings.float(), labels["identity"].to(engine.device), cfg.margin)
                finite = run.all_finite(loss, step + 1)
                if finite:
                    engine.backward(SIAMESE, loss)
                else:  # this micro-batch adds nothing, on every rank
                    engine.zero_backward(SIAMESE)
                    log.warning("step %d: non-finite loss on some rank, its gradients dropped on all ranks", step + 1)
            images_seen += len(images)
            window_finite = window_finite or finite
            applied = engine.step(SIAMESE, skip=not window_finite)
            if applied is None:
                continue  # inside a gradient accumulation window
            window_finite = False
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = all_reduce({"loss/contrastive": loss.item(), **stats,
                                      "grad_norm": engine.grad_norm(SIAMESE), "skipped": 0.0 if applied else 1.0})
                metrics.update(run.throughput(images_seen, time.perf_counter() - tick, (SIAMESE,)), lr=cfg.lr)
                run.log_scalars(step, metrics)
                log.info("step %d/%d loss %.4f", step, cfg.steps, metrics["loss/contrastive"])
                tick, images_seen = time.perf_counter(), 0
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if engine.is_main and len(val):
                    run.log_scalars(step, verification(engine.unwrap(SIAMESE), val, engine.device))
                barrier()
            run.end_step(step, sampler=sampler.state_dict(consumed), models=(SIAMESE,))
        return run.out
    finally:
        run.close()
