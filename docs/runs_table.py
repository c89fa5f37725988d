"""Print a Markdown table of training runs from their ``metrics.json`` files.

    python docs/runs_table.py docs/measured/fasterrcnn.json docs/measured/retinanet.json

One row per file, in the order given: the model, the preset, the steps, the test mAPs and
the training time and speed, every number as the run wrote it (rounded for reading).
The README and docs/retinanet.md tables are this script's output.
"""

import json
import sys

COLUMNS = (
    ("run", lambda m, name: name),
    ("model", lambda m, name: m.get("model", "fasterrcnn")),
    ("preset", lambda m, name: m["preset"]),
    ("steps", lambda m, name: m["iters"]),
    ("mAP@0.5", lambda m, name: f"{m['map50']:.3f}"),
    ("COCO mAP", lambda m, name: f"{m['map']:.3f}"),
    ("mAP@0.75", lambda m, name: f"{m['map75']:.3f}"),
    ("AP small", lambda m, name: f"{m['map_small']:.3f}"),
    ("AP medium", lambda m, name: f"{m['map_medium']:.3f}"),
    ("training s", lambda m, name: f"{m['train_seconds']:.0f}"),
    ("training images/s", lambda m, name: f"{m['images_per_second']:.1f}"),
)


def main(paths) -> None:
    print("| " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("| " + " | ".join("---" for _ in COLUMNS) + " |")
    for path in paths:
        with open(path) as f:
            m = json.load(f)
        parts = path.replace("\\", "/").split("/")
        name = parts[-1].removesuffix(".json")
        if name == "metrics" and len(parts) > 1:  # runs/NAME/metrics.json: the run's folder
            name = parts[-2]
        print("| " + " | ".join(str(get(m, name)) for _, get in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
