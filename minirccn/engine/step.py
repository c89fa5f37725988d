"""One SGD step, the same for every model kind (cs231n's ``Solver``, detectron2's ``run_step``)::

    batch = model.load_batch(dataset, indices, rng, backend)
    losses, cache = model.forward(batch, rng, backend=backend, batch_stats=...)
    check every loss is finite                    (else TrainingDiverged)
    grads = model.backward(cache)                 the model's hand-written backward
    grads = clip_grad_norm(grads)                 if the config sets clip_grad_norm
    optimizer.lr = lr_at(step); optimizer.step(grads)

with the learning rate warmed up linearly for ``warmup_iters`` steps, then multiplied by
``gamma`` at each of ``milestones``; batch norm uses the batch's statistics until
``bn_freeze_iter`` (then its running statistics, "frozen").
"""

from __future__ import annotations

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.nn import optim


class TrainingDiverged(MinirccnError):
    """A loss became NaN or infinite."""


def lr_at(step: int, config) -> float:
    """Learning rate of SGD step ``step`` (0-based): :func:`minirccn.nn.optim.lr_at` with the
    config's ``lr``, ``warmup_iters``, ``warmup_factor``, ``milestones`` and ``gamma``."""
    return optim.lr_at(
        step, config.lr, config.warmup_iters, config.warmup_factor, config.milestones, config.gamma
    )


def make_optimizer(model, prefixes=None):
    """SGD (the config's ``lr``, ``momentum``, ``weight_decay``) over the model's trainable
    parameters whose names start with ``prefixes`` (default: all its parts)."""
    cfg = model.config
    return optim.SGD(
        model.trainable(prefixes), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def batch_stats_at(step: int, config) -> bool:
    """Whether batch norm uses the batch's statistics at ``step`` (False from ``bn_freeze_iter``)."""
    return not (0 < config.bn_freeze_iter <= step)


def train_step(model, optimizer, batch, rng, step: int, *, backend: str, **forward_options) -> dict:
    """One SGD step on ``batch`` (module docstring); returns the losses (floats) and their sum
    ``loss``. ``forward_options`` go to ``model.forward`` (Faster R-CNN's alternating training:
    ``parts``, ``proposals``, ``train_backbone``). Raises :class:`TrainingDiverged` on NaN/inf."""
    cfg = model.config
    train_backbone = forward_options.get("train_backbone", True)
    batch_stats = train_backbone and batch_stats_at(step, cfg)
    losses, cache = model.forward(batch, rng, backend=backend, batch_stats=batch_stats, **forward_options)
    total = sum(losses.values())
    if not np.isfinite(total):
        bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not np.isfinite(v))
        raise TrainingDiverged(f"training diverged at step {step}: {bad}")
    grads = model.backward(cache)
    if cfg.clip_grad_norm > 0:
        grads, _ = optim.clip_grad_norm(grads, cfg.clip_grad_norm)
    optimizer.lr = lr_at(step, cfg)
    optimizer.step(grads)
    losses["loss"] = total
    return losses
