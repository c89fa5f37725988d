"""RoI head: class-specific box loss, empty / all-background batches, float64 gradient check."""

import numpy as np
import pytest

from minirccn.nn.gradcheck import numerical_grad, rel_error
from minirccn.detector.roi_heads.box_head import head_backward, head_forward, head_losses, init_head


def test_box_loss_uses_each_rois_own_class():
    k = 3
    logits = np.zeros((3, k))
    deltas = np.zeros((3, 4 * k))
    deltas[0, 4:8] = 1.0  # class 1's deltas of RoI 0 (its class): counted
    deltas[0, 8:12] = 7.0  # class 2's deltas of RoI 0: ignored
    deltas[2, :] = 9.0  # background RoI: ignored
    labels = np.array([1, 2, 0])
    targets = np.zeros((3, 4))
    lc, lb, dl, dd = head_losses(logits, deltas, labels, targets, beta=1 / 9)
    assert lc == pytest.approx(np.log(3))
    assert lb == pytest.approx(4 * (1 - 0.5 / 9) / 3)
    assert np.count_nonzero(dd[0]) == 4 and np.all(dd[0, 4:8] == 1 / 3)
    assert not dd[2].any() and not dd[1].any()


def test_all_background_and_empty():
    lc, lb, dl, dd = head_losses(
        np.zeros((4, 3)), np.ones((4, 12)), np.zeros(4, np.int64), np.ones((4, 4))
    )
    assert lb == 0.0 and not dd.any() and np.isfinite(lc)
    lc, lb, dl, dd = head_losses(
        np.zeros((0, 3)), np.zeros((0, 12)), np.zeros(0, np.int64), np.zeros((0, 4))
    )
    assert (lc, lb) == (0.0, 0.0) and dl.shape == (0, 3)


def _setup(seed=0, dropout=0.0):
    rng = np.random.default_rng(seed)
    params = init_head(2, 3, 6, rng, roi_output_size=2, dtype=np.float64)
    params = {k: v + rng.normal(size=v.shape) * 0.3 for k, v in params.items()}
    feats = rng.normal(size=(2, 2, 5, 6))
    rois = np.array(
        [[0, 0, 0, 40, 30], [1, 8, 8, 60, 60], [0, 20, 4, 90, 70], [1, 0, 0, 15, 15]], np.float64
    )
    labels = np.array([1, 2, 0, 1])
    targets = rng.normal(size=(4, 4)) * 0.3
    return params, feats, rois, labels, targets


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_gradient_check(dropout):
    params, feats, rois, labels, targets = _setup(dropout=dropout)

    def loss():
        lg, dl, _ = head_forward(
            params,
            feats,
            rois,
            1 / 16,
            output_size=2,
            dropout=dropout,
            rng=np.random.default_rng(1),
            backend="numpy",
        )
        a, b, _, _ = head_losses(lg, dl, labels, targets)
        return a + b

    lg, dl, cache = head_forward(
        params,
        feats,
        rois,
        1 / 16,
        output_size=2,
        dropout=dropout,
        rng=np.random.default_rng(1),
        backend="numpy",
    )
    assert lg.shape == (4, 3) and dl.shape == (4, 12)
    _, _, dlg, ddl = head_losses(lg, dl, labels, targets)
    dfeats, grads = head_backward(dlg, ddl, cache)
    assert set(grads) == set(params)
    for name in params:
        assert rel_error(grads[name], numerical_grad(loss, params[name])) < 1e-6, name
    assert rel_error(dfeats, numerical_grad(loss, feats)) < 1e-6
