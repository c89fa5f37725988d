"""Stochastic gradient descent with momentum and weight decay, and the step LR schedule.

:class:`SGD` follows ``torch.optim.SGD`` (dampening 0, no Nesterov) exactly, per
parameter ``p`` with gradient ``g``::

    g   = g + weight_decay * p
    buf = g                          (first step)
    buf = momentum * buf + g         (later steps)
    p   = p - lr * buf               (in place)

(with ``momentum == 0`` there is no buffer: ``p = p - lr * g``).

:func:`clip_grad_norm` is ``torch.nn.utils.clip_grad_norm_`` (L2 norm over every gradient
together), applied to the gradients before the step when a config asks for it.

:func:`lr_at` is the learning rate of torchvision's detection reference
(``WarmupMultiStepLR``): a linear warmup from ``warmup_factor * base_lr`` to
``base_lr`` over ``warmup_iters`` steps, then multiplied by ``gamma`` at every
milestone passed.
"""

from __future__ import annotations

import bisect

import numpy as np

from minirccn.core import backend as _backend


class SGD:
    """SGD with momentum on a dict of parameter arrays, updated in place.

    Args:
        params: ``{name: array}`` (float32/float64, NumPy or CuPy); the arrays are
            updated in place, so the model sees the new values without copying.
        lr: learning rate (the attribute ``opt.lr`` may be changed between steps).
        momentum: ``>= 0``.
        weight_decay: L2 penalty coefficient ``>= 0``.
    """

    def __init__(self, params: dict, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict name -> array, got {type(params).__name__}")
        for name, p in params.items():
            if not hasattr(p, "dtype") or p.dtype not in (np.float32, np.float64):
                got = getattr(p, "dtype", type(p).__name__)
                raise TypeError(f"params[{name!r}]: expected a float32/float64 array, got {got}")
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a non-negative number, got {v!r}")
        self.params = params
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: dict = {}  # name -> momentum buffer (created at a parameter's first step)

    def step(self, grads: dict) -> None:
        """Update every parameter that has a gradient in ``grads`` (others are skipped,
        like torch parameters whose ``.grad`` is None; so are non-trained entries such
        as batch-norm running statistics)."""
        for name, g in grads.items():
            if name not in self.params:
                raise ValueError(f"grads: {name!r} is not a parameter of this optimizer")
            p = self.params[name]
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(
                    f"grads[{name!r}]: shape {tuple(g.shape)} differs from the parameter's {tuple(p.shape)}"
                )
            xp = _backend.get_array_module(p)
            g = xp.asarray(g).astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                g = buf
            p -= self.lr * g

    def state_dict(self) -> dict:
        """A flat dict of arrays (ready for ``numpy.savez``): ``lr``, ``momentum``,
        ``weight_decay`` (0-d) and ``buffer.<name>`` for every momentum buffer (host copies)."""
        state = {
            "lr": np.asarray(self.lr),
            "momentum": np.asarray(self.momentum),
            "weight_decay": np.asarray(self.weight_decay),
        }
        for name, buf in self.buffers.items():
            state[f"buffer.{name}"] = _backend.to_numpy(buf).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (buffers land on each parameter's device)."""
        missing = [k for k in ("lr", "momentum", "weight_decay") if k not in state]
        if missing:
            raise ValueError(f"state: missing {', '.join(missing)}")
        buffers = {}
        for key, value in state.items():
            if not key.startswith("buffer."):
                continue
            name = key[len("buffer.") :]
            if name not in self.params:
                raise ValueError(f"state: buffer {name!r} has no matching parameter")
            p = self.params[name]
            if tuple(np.shape(value)) != tuple(p.shape):
                raise ValueError(
                    f"state: buffer {name!r} has shape {tuple(np.shape(value))}, parameter {tuple(p.shape)}"
                )
            xp = _backend.get_array_module(p)
            buffers[name] = xp.array(value, dtype=p.dtype)  # a copy
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.buffers = buffers


def clip_grad_norm(grads: dict, max_norm: float, eps: float = 1e-6):
    """Scale every gradient by the same factor so that their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``::

        total = sqrt(sum_p sum(g_p ** 2))          over every gradient of ``grads``
        coef  = max_norm / (total + eps)
        g_p   = g_p * min(coef, 1)                 for every p (unchanged when coef >= 1)

    Args:
        grads: ``{name: array}`` float gradients (NumPy or CuPy).
        max_norm: the largest joint norm, ``> 0``.
        eps: added to the norm (torch's 1e-6).

    Returns:
        ``(clipped, total)``: a new dict (the arrays themselves when nothing is clipped) and
        the norm before clipping (a float).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    total = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
    coef = float(max_norm) / (total + eps)
    if coef >= 1:
        return dict(grads), total
    return {k: g * g.dtype.type(coef) for k, g in grads.items()}, total


def lr_at(
    step: int,
    base_lr: float,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0 / 1000,
    milestones=(),
    gamma: float = 0.1,
) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then step decay.

    ``lr = base_lr * warmup * gamma ** (number of milestones <= step)``, where
    ``warmup = warmup_factor * (1 - a) + a`` with ``a = step / warmup_iters`` while
    ``step < warmup_iters``, else 1.
    """
    if step < 0:
        raise ValueError(f"step: expected a non-negative int, got {step!r}")
    warmup = 1.0
    if step < warmup_iters:
        a = step / warmup_iters
        warmup = warmup_factor * (1 - a) + a
    return base_lr * warmup * gamma ** bisect.bisect_right(sorted(milestones), step)
