"""Worked solutions of tutorial 8's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's own variables (``cfg``, ``train_data``, ``evaluate_on_test``) from the
running script, as a student's code in the tutorial would.
"""

import __main__

from minirccn.engine import loop as tr


def _scaled(steps):
    m = __main__
    f = steps / m.cfg.iters
    return m.cfg.replace(
        iters=steps,
        warmup_iters=max(1, round(m.cfg.warmup_iters * f)),
        milestones=tuple(max(1, round(x * f)) for x in m.cfg.milestones),
        bn_freeze_iter=max(2, round(m.cfg.bn_freeze_iter * f)) if m.cfg.bn_freeze_iter else 0,
    )


def _run(config, seed, alternating=False):
    m = __main__
    out = tr.train(
        config, train_data=m.train_data, out=None, backend=m.BACKEND, seed=seed,
        alternating=alternating, eval_split="", progress=False,
    )
    return out


def joint_and_alternating_map50(seed, steps):
    m = __main__
    config = _scaled(steps)
    joint = m.evaluate_on_test(_run(config, seed)["model"])[1]["map50"]
    alt = m.evaluate_on_test(_run(config, seed, alternating=True)["model"])[1]["map50"]
    return joint, alt


def map50_with_flip(flip, steps):
    m = __main__
    return m.evaluate_on_test(_run(_scaled(steps).replace(flip=flip), m.SEED)["model"])[1]["map50"]


def losses_double_lr(steps):
    m = __main__
    config = _scaled(steps)
    config = config.replace(lr=2 * config.lr, warmup_iters=max(1, config.warmup_iters // 2))
    return _run(config, m.SEED)["history"]["loss"]
