"""A refactor proves itself: 300-step runs of every model kind give the same metrics.json.

    python scripts/same_numbers.py run OUT           # the six 300-step runs into OUT/<kind>/
    python scripts/same_numbers.py compare OUT       # every non-timing value against the baselines
    python scripts/same_numbers.py compare OUT BASE  # ... against the runs in BASE/<kind>/

The baselines, docs/measured/same-300/<kind>.json, are the metrics.json of the same runs made
with the code of issue 22's Winograd convolution (7 December 2026: it changes the summation
order of the numba backend's 3x3 stride-1 convs with >= 32 channels, so every kind's numbers
moved, by rounding at first; and the RetinaNet preset's schedule fields); the runs are
deterministic, so any difference in a non-timing value means the numbers moved. The baselines
before it (15c43c7) are in git history. docs/measured/refactor-300/ keeps the
runs of the code before the detector redesign (09c0f12), which the redesign matched; commits
since moved numbers on purpose (faster kernels, new config fields). A change meant to move
numbers records new baselines (``run`` into docs/measured/same-300 after it); any other change
proves itself against them, or against BASE: the same ``run`` with another commit's code
(e.g. ``git archive COMMIT | tar -x -C /tmp/base`` and
``PYTHONPATH=/tmp/base python /tmp/base/scripts/same_numbers.py run /tmp/base-runs``).
"""

import json
import subprocess
import sys
from pathlib import Path

BASELINES = Path(__file__).resolve().parents[1] / "docs" / "measured" / "same-300"
#: kind -> the flags of ``minirccn train``
RUNS = {
    "default": [],
    "tiny-align": ["--preset", "tiny-align"],
    "fpn": ["--preset", "resnet-fpn-tiny"],
    "retinanet": ["--model", "retinanet"],
    "alternating": ["--alternating"],
    "fastrcnn": ["--model", "fastrcnn", "--proposals", "selective-search"],
}
TIMING = {"train_seconds", "images_per_second", "eval_seconds", "val_seconds"}


def without_timings(value):
    """``value`` with every timing key removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run(out: Path) -> None:
    for kind, flags in RUNS.items():
        argv = ["minirccn", "train", "--iters", "300", "--no-progress", "--out", str(out / kind)]
        subprocess.run(argv + flags, check=True, stdout=subprocess.DEVNULL)


def compare(out: Path, base: Path | None = None) -> int:
    """Print one line per run; 1 if any non-timing value of ``out``'s runs differs from the
    baselines (or from ``base``'s runs), else 0."""
    failures = 0
    for kind in RUNS:
        wanted = base / kind / "metrics.json" if base is not None else BASELINES / f"{kind}.json"
        want = without_timings(json.loads(wanted.read_text()))
        got = without_timings(json.loads((out / kind / "metrics.json").read_text()))
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        failures += bool(diff)
        verdict = "identical" if not diff else f"DIFFERENT: {', '.join(diff)}"
        print(f"{kind:12s} {len(want):3d} values {verdict}  (map50 {got.get('map50')})")
    return 1 if failures else 0


if __name__ == "__main__":
    usage_ok = (len(sys.argv) == 3 and sys.argv[1] == "run") or (
        len(sys.argv) in (3, 4) and sys.argv[1] == "compare"
    )
    if not usage_ok:
        sys.exit(__doc__)
    folder = Path(sys.argv[2])
    if sys.argv[1] == "run":
        run(folder)
    sys.exit(compare(folder, Path(sys.argv[3]) if len(sys.argv) == 4 else None))
