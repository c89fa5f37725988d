"""Issue 23's test-time NMS lever: the box head's ``box_nms_thresh`` at evaluation only.

    python scripts/test_time_nms.py RUNS DATA OUT.json

``RUNS/<set>-<seed>/checkpoint.npz`` are ``minirccn train --data DATA/<set>/train.json
--val-data DATA/<set>/dev.json --seed <seed>`` runs (the real sets of
``scripts/make_real_sets.py``); each is evaluated on ``DATA/<set>/dev.json`` with the head's NMS
threshold at 0.5 (the default), 0.6 and 0.7, the training unchanged. One JSON row per run and
threshold (mAP@0.5, COCO mAP, mAR@100), printed and written to ``OUT.json``.
"""

import dataclasses
import json
import sys
from pathlib import Path

from minirccn.data import load_dataset
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.inference import evaluate_model

THRESHOLDS = (0.5, 0.6, 0.7)


def main(runs: Path, data: Path, out: Path) -> None:
    rows = []
    for folder in sorted(p for p in runs.iterdir() if (p / "checkpoint.npz").is_file()):
        name = folder.name.rsplit("-", 1)[0]
        dataset = load_dataset(str(data / name / "dev.json"), split="all")
        for t in THRESHOLDS:
            model, _ = load_checkpoint(str(folder / "checkpoint.npz"))
            model.postprocess = dataclasses.replace(model.postprocess, nms_thresh=t)
            r = evaluate_model(model, dataset, backend="numba", progress=False)
            rows.append({"run": folder.name, "box_nms_thresh": t,
                         **{k: round(r[k], 4) for k in ("map50", "map", "mar_100")}})
            print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
