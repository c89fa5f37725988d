"""The end-of-run summary's verdict: rising, overfitting, flat, recall (minirccn.app.summary)."""

from minirccn.app import summary


def _curve(maps, losses=None, mar=0.8):
    losses = losses or [1.0 / (i + 1) for i in range(len(maps))]
    return [
        {"step": 100 * (i + 1), "map50": m, "map": m / 2, "mar_100": mar, "train_loss": l}
        for i, (m, l) in enumerate(zip(maps, losses))
    ]


def _metrics(maps, losses=None, mar=0.8, minutes=5.0):
    curve = _curve(maps, losses, mar)
    m = {"val_curve": curve, "map50": maps[-1], "mar_100": mar, "iters": curve[-1]["step"]}
    if minutes:
        m["derived"] = {"minutes": minutes}
    return m


def test_no_curve_no_verdict():
    assert summary.verdict({"map50": 0.5}) is None
    assert "verdict" not in summary.summary_dict({"map50": 0.5}, None)


def test_rising_suggests_twice_the_minutes():
    v = summary.verdict(_metrics([0.2, 0.4, 0.5, 0.6]))
    assert v["trend"] == "rising" and v["flag"] == "--minutes 10"
    assert "still rising" in v["text"] and "--minutes 10" in v["text"]


def test_rising_without_a_budget_suggests_iters():
    v = summary.verdict(_metrics([0.2, 0.6], minutes=None))
    assert v["trend"] == "rising" and v["flag"] == "--iters 400"


def test_overfitting_when_val_falls_and_train_loss_falls():
    v = summary.verdict(_metrics([0.3, 0.7, 0.6, 0.5]))  # losses fall 1, 1/2, 1/3, 1/4
    assert v["trend"] == "overfitting"
    assert v["peak"]["step"] == 200 and v["flag"] == "--minutes 2.5"
    assert "best.npz" in v["text"]


def test_val_falls_but_train_loss_rises_is_not_overfitting():
    v = summary.verdict(_metrics([0.3, 0.7, 0.6, 0.5], losses=[1.0, 0.5, 0.6, 0.7]))
    assert v["trend"] == "flat" and v["flag"] is None


def test_one_dip_after_a_late_peak_is_noise_not_overfitting():
    # the dsb dev set's curve: 42 objects, one more or less moves mAP@0.5 by ~0.02
    v = summary.verdict(_metrics([0.81, 0.81, 0.86, 0.85, 0.88, 0.89, 0.92, 0.887]))
    assert v["trend"] == "flat" and v["flag"] is None
    # an early peak, a sustained fall: overfitting
    v = summary.verdict(_metrics([0.92, 0.95, 0.88, 0.92, 0.92, 0.90, 0.92, 0.885]))
    assert v["trend"] == "overfitting" and v["peak"]["step"] == 200


def test_flat_and_low_recall():
    v = summary.verdict(_metrics([0.3, 0.5, 0.5, 0.51], mar=0.13))
    assert v["trend"] == "flat" and v["flag"] is None
    share = "mAR@100 0.130 (the share of the objects a detection matches, averaged over IoU 0.5"
    assert share in v["text"]
    assert "Recall is low" in v["text"] and "loosely" in v["text"]


def test_format_and_dict_carry_the_verdict():
    m = _metrics([0.2, 0.4, 0.5, 0.6])
    m.update(iters=400, train_seconds=1.0, images_per_second=1.0, backend="numba",
             eval_images=3, eval_split="all", map=0.3)
    text = summary.format_summary(m, None)
    assert "verdict: validation mAP@0.5 0.600, mAR@100 0.800" in text
    assert "mAR@100 0.8000" in text
    d = summary.summary_dict(m, None)
    assert d["verdict"]["trend"] == "rising" and d["mar_100"] == 0.8


def test_steps_the_user_set_get_an_iters_flag():
    """--iters 600 (or --set iters=...): the suggestion is --iters, which combines with the rest
    of the command line (--minutes and --iters do not)."""
    m = _metrics([0.2, 0.4, 0.5, 0.6], minutes=0.8)
    m["config_sources"] = {"iters": "--iters"}
    assert summary.verdict(m)["flag"] == "--iters 800"
    m = _metrics([0.3, 0.7, 0.6, 0.5], minutes=0.8)
    m["config_sources"] = {"iters": "--set"}
    assert summary.verdict(m)["flag"] == "--iters 200"


def test_a_budget_capped_at_max_epochs_gets_an_iters_flag():
    """Capped at MAX_EPOCHS passes, twice the minutes would train the same steps."""
    m = _metrics([0.2, 0.4, 0.5, 0.6], minutes=1.2)
    m["derived"]["capped_at_epochs"] = 150
    assert summary.verdict(m)["flag"] == "--iters 800"
    m["derived"]["capped_at_epochs"] = None
    m["config_sources"] = {"iters": "derived"}
    assert summary.verdict(m)["flag"] == "--minutes 2.4"
