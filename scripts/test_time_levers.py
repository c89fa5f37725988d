"""Issue 23's test-time levers on the real dev sets: flip, proposals, the head's NMS and scores.

    python scripts/test_time_levers.py RUNS DATA OUT.json [SPLIT]

``RUNS/<set>-<seed>/checkpoint.npz`` are ``minirccn train --data DATA/<set>/train.json
--val-data DATA/<set>/dev.json --seed <seed>`` runs (the real sets of
``scripts/make_real_sets.py``, the default own-data config). Each is evaluated on
``DATA/<set>/dev.json`` as trained (``base``), with ``test_flip`` on (``flip``), and with the
head's NMS threshold at 0.6 and 0.7 (``nms0.6``, ``nms0.7``), and at 0.6 with more proposals at
inference (``nms0.6-propsN``: the RPN keeps ``N`` after its NMS, ``3 N`` before; the checkpoints'
own: 100 and 300), and with 500 proposals and the detections' score threshold at 0.01 and 0.001
(``nms0.6-props500-scoreS``; the checkpoints': 0.05), and with the tiny preset's values of
those four fields (``preset-test-time``: what rules 7-9 replaced, for checkpoints trained with
them); the training is the same. A folder
``RUNS/xsite-K`` may be a link to ``RUNS/dsb-K`` (``xsite`` trains on the very files of
``dsb``). One JSON row per run and variant (mAP@0.5, COCO mAP, mAR@100), printed and written
to ``OUT.json``, then the mean of each set and variant over its runs. ``SPLIT`` (default ``dev``) names the file
evaluated: ``test`` reports the test split, once, after the choices were made on ``dev``.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.inference import evaluate_model

METRICS = ("map50", "map", "mar_100")
PROPOSALS = (150, 200, 300, 500, 700, 1000)  # kept after the RPN's NMS at inference (preset: 100)
SCORES = (0.01, 0.001)  # score thresholds of the kept detections (the tiny preset: 0.05)


def variants(model):
    """``(name, model)`` pairs: the checkpoint's model changed at test time only."""
    yield "base", model
    yield "flip", _rebuilt(model, test_flip=True)
    for t in (0.6, 0.7):
        yield f"nms{t}", _rebuilt(model, box_nms_thresh=t)
    for post in PROPOSALS:  # the head's NMS at 0.6 (rule 7) and more proposals (rule 8)
        yield f"nms0.6-props{post}", _rebuilt(
            model, box_nms_thresh=0.6, rpn_post_nms_top_n_test=post, rpn_pre_nms_top_n_test=3 * post
        )
    tiny = preset("tiny")  # the preset's test-time fields, which rules 7-9 replace
    fields = (
        "box_nms_thresh", "box_score_thresh", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test"
    )
    yield "preset-test-time", _rebuilt(model, **{k: getattr(tiny, k) for k in fields})
    for score in SCORES:  # ... and a lower score threshold of the kept detections (rule 9)
        yield f"nms0.6-props500-score{score:g}", _rebuilt(
            model, box_nms_thresh=0.6, rpn_post_nms_top_n_test=500, rpn_pre_nms_top_n_test=1500,
            box_score_thresh=score,
        )


def _rebuilt(model, **fields):
    """The checkpoint's model, its config's test-time ``fields`` replaced, the same parameters."""
    return type(model)(model.config.replace(**fields), model.class_names, params=model.params)


def main(runs: Path, data: Path, out: Path, split: str = "dev") -> None:
    rows = []
    for folder in sorted(p for p in runs.iterdir() if (p / "checkpoint.npz").is_file()):
        name = folder.name.rsplit("-", 1)[0]
        dataset = load_dataset(str(data / name / f"{split}.json"), split="all")
        model, _ = load_checkpoint(str(folder / "checkpoint.npz"))
        for variant, m in variants(model):
            r = evaluate_model(m, dataset, backend="numba", progress=False)
            rows.append({"run": folder.name, "variant": variant, **{k: round(r[k], 4) for k in METRICS}})
            print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    groups = defaultdict(list)
    for row in rows:
        groups[row["run"].rsplit("-", 1)[0], row["variant"]].append(row)
    for (name, variant), group in sorted(groups.items()):
        means = " / ".join(f"{sum(r[k] for r in group) / len(group):.3f}" for k in METRICS)
        print(f"{name:8s} {variant:7s} {len(group)} runs  mAP@0.5 / mAP / mAR@100  {means}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:])
