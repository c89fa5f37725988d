"""Issue 23's initialisation lever: an own-data run with the derived defaults whose backbone
starts from a ``shapes`` checkpoint's instead of a random draw.

    python scripts/shapes_init.py TRAIN.json DEV.json SEED OUT CHECKPOINT.npz backbone|backbone+fc

``CHECKPOINT.npz`` is the default ``shapes`` run (``minirccn train --out runs/shapes``: the tiny
preset, 5000 steps); ``backbone`` takes its ``backbone.*`` arrays (the convs and their batch
norms: the same shapes at every derived stride, whose pools have no parameters), ``backbone+fc``
also the box head's two fc layers. Everything else is ``minirccn train --data TRAIN.json
--val-data DEV.json --seed SEED``'s (the derived config, its steps, its seed); the last line
printed is the final evaluation on ``DEV.json`` (docs/real_data.md, "initialisation").
"""
import argparse
import json
import sys

from minirccn.app.userdata import configure
from minirccn.config import preset
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.loop import train


def main(data, val, seed, out, checkpoint, which) -> dict:
    args = argparse.Namespace(
        preset="tiny", set=[], lr=None, minutes=None, iters=None, config=None,
        eval_split="test", data=data, images=None, val_data=val, val_images=None, split=None,
        no_derive=False,
    )
    setup = configure(args, log=print, base=preset("tiny"))
    model, _ = load_checkpoint(checkpoint)
    prefixes = ("backbone.",) if which == "backbone" else ("backbone.", "head.fc")
    init = {k: v for k, v in model.params.items() if k.startswith(prefixes)}
    print(f"initialised from {checkpoint}: {len(init)} arrays ({which})")
    result = train(
        setup["config"], train_data=setup["train_data"], test_data=setup["test_data"], out=out,
        overwrite=True, backend="numba", seed=int(seed), iters=setup["iters"],
        eval_split=setup["eval_split"], progress=False, extra_metrics=setup["metrics"],
        init_params=init,
    )
    m = result["metrics"]
    final = {k: m[k] for k in ("map50", "map", "mar_100", "train_seconds", "iters")}
    print("final", json.dumps(final))
    return final


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[6] not in ("backbone", "backbone+fc"):
        sys.exit(__doc__)
    main(*sys.argv[1:])
