"""What the JPEG structure check (minirccn.data.jpeg, D19) costs next to decoding the image.

    python scripts/jpeg_check_cost.py

For a 512x512 and a 2000x1500 JPEG (baseline 4:2:0 and progressive, quality 90; a smooth
pattern with mild and with heavy noise: the walk's cost follows the file's size, the decoding's
mostly the pixel count), prints the best of 15 runs of: Pillow decoding the file to RGB (what
``read_image`` does), and ``jpeg_data_problem`` on its bytes (the walk; the per-file cache of
``jpeg_problem`` left out). Run it alone (``/work/heavy/run --alone``) for numbers to report.
"""

from __future__ import annotations

import io
import platform
import time

import numpy as np
from PIL import Image

from minirccn.data.jpeg import jpeg_data_problem


def picture(width, height, noise, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (127 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0))[..., None] + np.array([0, 30, -30])
    return Image.fromarray(np.clip(base + rng.normal(0, noise, (height, width, 3)), 0, 255)
                           .astype(np.uint8))


def best(f, repeat=15):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    jpeg_data_problem(b"\xff\xd8\xff\xd9")  # compile (or load Numba's cache) first
    print("| image | kind | noise | file | decode (Pillow) | check | check / decode |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w, h in ((512, 512), (2000, 1500)):
        for noise in (8, 20):
            im = picture(w, h, noise)
            for kind, options in (("baseline", {}), ("progressive", {"progressive": True})):
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90, **options)
                data = buf.getvalue()
                assert jpeg_data_problem(data) is None
                decode = best(lambda: Image.open(io.BytesIO(data)).convert("RGB"))
                check = best(lambda: jpeg_data_problem(data))
                print(f"| {w}x{h} | {kind} | {noise} | {len(data) / 1e3:.0f} kB | "
                      f"{decode * 1e3:.2f} ms | {check * 1e3:.2f} ms | {check / decode:.2f} |")


if __name__ == "__main__":
    main()
