"""Faster R-CNN's 4-step alternating training (the paper's Sec. 3.2), each step ``iters / 4``
iterations:

1. backbone + RPN, RPN losses only;
2. a *fresh* backbone + the head, head losses only, on the proposals of the step-1 network
   (held fixed);
3. the step-2 backbone frozen; the RPN layers fine-tuned;
4. the backbone still frozen; the head fine-tuned on the step-3 proposals.

Each step is :func:`~minirccn.engine.step.train_step` with Faster R-CNN's forward options
(``parts``, ``proposals``, ``train_backbone``); only that model has them
(``ALTERNATING = True``).
"""

from __future__ import annotations

from minirccn.core.progress import progress_bar

from minirccn.data.batching import batch_indices
from minirccn.engine.step import make_optimizer, train_step


def train_alternating(model, data, rng, seed, backend, history, progress=True):
    """The paper's 4-step alternating training (module docstring) of Faster R-CNN ``model``
    (its first network) on ``data``; appends to ``history`` (None where a step does not compute
    a loss); returns the final model."""
    config = model.config
    quarter = max(config.iters // 4, 1)
    # step 1: backbone + RPN
    rpn_model = model
    # step 2: a fresh backbone + head, on step-1 proposals
    det_model = type(model)(config, model.class_names, rng=rng).to(backend)
    plan = [
        (rpn_model, ("rpn",), True, None),
        (det_model, ("head",), True, rpn_model),
        (det_model, ("rpn",), False, None),
        (det_model, ("head",), False, det_model),
    ]
    step = 0
    for alt_step, (net, parts, train_backbone, proposer) in enumerate(plan, start=1):
        if alt_step == 3:  # the detector takes over the RPN layers trained in step 1
            det_model.params.update(
                {k: v.copy() for k, v in rpn_model.params.items() if k.startswith("rpn.")}
            )
        prefixes = tuple(s + "." for s in parts) + (("backbone.",) if train_backbone else ())
        opt = make_optimizer(net, prefixes)
        bar = progress_bar(
            range(quarter),
            desc=f"alternating step {alt_step}/4",
            unit="step",
            enabled=progress,
            dynamic_ncols=True,
        )
        for i in bar:
            idx = batch_indices(seed, step, config.images_per_batch, len(data))
            batch = net.load_batch(data, idx, rng, backend)
            proposals = None
            if proposer is not None:
                _, props = proposer.rpn_proposals(
                    batch.images, batch.image_sizes, training=True, backend=backend
                )
                proposals = [b for b, _ in props]
            losses = train_step(
                net,
                opt,
                batch,
                rng,
                i,
                backend=backend,
                parts=parts,
                proposals=proposals,
                train_backbone=train_backbone,
            )
            for k in history:
                history[k].append(
                    float(losses[k]) if k in parts_losses(parts) or k == "loss" else None
                )
            step += 1
    return det_model


def parts_losses(parts) -> tuple:
    """The loss names that a tuple of detector parts (``"rpn"``, ``"head"``) computes."""
    names = ()
    if "rpn" in parts:
        names += ("loss_objectness", "loss_rpn_box_reg")
    if "head" in parts:
        names += ("loss_classifier", "loss_box_reg")
    return names
