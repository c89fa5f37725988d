"""Compare minirccn's sigmoid_focal_loss (value and hand-written gradient) with torchvision's.

Not part of the test suite (the project never depends on torch). Run it with a Python that has
torch and torchvision installed, from the repository root::

    /work/tvenv/bin/python docs/focal_loss_vs_torchvision.py

Cases: random shapes, logits of several scales including +-40 and beyond, hard {0, 1} and soft
[0, 1] targets, alpha in {0.25, 0.5, 0, 1, -1}, gamma in {0, 0.5, 1, 2, 5}, every reduction; all in
float64. torch's gradient is autograd's gradient of ``loss`` (``loss.sum()`` for "none").
"""

import sys

import numpy as np
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

sys.path.insert(0, ".")
from minirccn import losses


def main(n_cases: int = 3000, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    worst_loss = worst_grad = 0.0
    skipped_nan = 0
    for case in range(n_cases):
        shape = tuple(rng.integers(1, 7, rng.integers(1, 4)))
        scale = rng.choice([0.5, 3.0, 10.0, 40.0])
        x = rng.standard_normal(shape) * scale
        if case % 5 == 0:  # exactly +-40 and beyond
            x = rng.choice([-40.0, 40.0, -100.0, 100.0, 0.0, 1e-3], size=shape)
        if case % 2:
            t = rng.integers(0, 2, shape).astype(np.float64)
        else:
            t = rng.random(shape)
        alpha = float(rng.choice([0.25, 0.5, 0.0, 1.0, -1.0]))
        gamma = float(rng.choice([0.0, 0.5, 1.0, 2.0, 5.0]))
        reduction = str(rng.choice(["none", "mean", "sum"]))

        loss, grad = losses.sigmoid_focal_loss(x, t, alpha, gamma, reduction)

        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        tl = tv_focal(xt, torch.tensor(t), alpha=alpha, gamma=gamma, reduction=reduction)
        tl.sum().backward()
        tgrad = xt.grad.numpy()
        if not np.all(np.isfinite(tgrad)):
            # torch's autograd of q**gamma with gamma < 1 at q == 0 (a saturated logit with a
            # hard target) is 0 * inf = NaN; ours is the finite limit. Compare the rest.
            assert gamma < 1, (case, gamma)
            ok = np.isfinite(tgrad)
            skipped_nan += int((~ok).sum())
            tgrad, grad = tgrad[ok], grad[ok]
        worst_loss = max(worst_loss, float(np.max(np.abs(np.asarray(loss) - tl.detach().numpy()))))
        if grad.size:
            worst_grad = max(worst_grad, float(np.max(np.abs(grad - tgrad))))
    print(f"torch {torch.__version__}, {n_cases} cases")
    print(f"max |loss - torchvision| = {worst_loss:.3e}")
    print(f"max |dlogits - torch autograd| = {worst_grad:.3e}")
    print(f"gradient entries where torch autograd gives NaN (gamma < 1, q == 0): {skipped_nan}")
    ok = worst_loss <= 1e-9 and worst_grad <= 1e-9
    print("AGREE to 1e-9" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
