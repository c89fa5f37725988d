"""The JPEG structure check (minirccn.data.jpeg): every intact file Pillow writes passes, every
file cut inside its image data and closed with an end-of-image marker (D19 of the misuse sweep:
Pillow decodes it grey-filled without a word) is found, and the adversarial cases hold."""

import io

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from minirccn.data import jpeg as J
from minirccn.data.checks import image_problem
from minirccn.data.common import ImageUnreadable, read_image

EOI = b"\xff\xd9"


def picture(width, height, seed, noise=20.0, grey=False):
    """A smooth pattern with Gaussian noise: ``(height, width, 3)`` uint8 (or ``(height,
    width)`` when ``grey``) as a Pillow image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (127 + 60 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0))[..., None] + np.array([0, 30, -30])
    pixels = np.clip(base + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    return im.convert("L") if grey else im


def encode(im, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **options)
    return buf.getvalue()


def first_scan_data(data: bytes) -> int:
    """Index of the first byte after the first SOS segment."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + (data[sos + 2] << 8 | data[sos + 3])


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


SAVE_OPTIONS = st.fixed_dictionaries(
    {
        "quality": st.integers(1, 100),
        "subsampling": st.sampled_from([0, 1, 2]),  # 4:4:4, 4:2:2, 4:2:0
        "optimize": st.booleans(),
        "progressive": st.booleans(),
    },
    optional={
        "restart_marker_blocks": st.integers(1, 7),
        "restart_marker_rows": st.integers(1, 3),
    },
)


@given(
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    grey=st.booleans(),
    noise=st.sampled_from([0.0, 5.0, 40.0]),
    options=SAVE_OPTIONS,
    seed=st.integers(0, 2**16),
)
def test_intact_files_pass_and_every_cut_closed_with_an_end_marker_is_found(
    width, height, grey, noise, options, seed
):
    if "restart_marker_blocks" in options and "restart_marker_rows" in options:
        del options["restart_marker_rows"]
    try:
        data = encode(picture(width, height, seed, noise, grey), **options)
    except OSError:  # Pillow's own limit (optimize=True with restart rows on large images)
        assume(False)
    assert J.jpeg_data_problem(data) is None, options
    start, end = first_scan_data(data), len(data) - len(EOI)
    rng = np.random.default_rng(seed)
    cuts = {start, end - 1, *rng.integers(start, end, 12).tolist()}
    for cut in sorted(cuts):
        problem = J.jpeg_data_problem(data[:cut] + EOI)
        assert problem is not None and problem.startswith("truncated JPEG"), (cut, end, options)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_every_cut_of_a_small_file_is_found(progressive, subsampling):
    """Exhaustive: every byte of the image data of a small file cut off, one after another."""
    data = encode(picture(37, 21, 3), quality=85, subsampling=subsampling, progressive=progressive,
                  restart_marker_blocks=2)
    assert J.jpeg_data_problem(data) is None
    for cut in range(first_scan_data(data), len(data) - len(EOI)):
        assert J.jpeg_data_problem(data[:cut] + EOI) is not None, cut


def test_the_plain_python_walk_agrees_with_numba():
    """The walk and the unstuffing run as plain Python (``py_func``) give the same answers."""
    data = encode(picture(30, 19, 1), quality=90, restart_marker_blocks=3)
    prog = encode(picture(30, 19, 2, grey=True), quality=70, progressive=True)
    cases = [data, data[:-40] + EOI, prog, prog[:-25] + EOI, prog[: first_scan_data(prog)] + EOI]
    numba_answers = [J.jpeg_data_problem(d) for d in cases]
    mp = pytest.MonkeyPatch()
    mp.setattr(J, "walk_scan", J.walk_scan.py_func)
    mp.setattr(J, "unstuff", J.unstuff.py_func)
    try:
        python_answers = [J.jpeg_data_problem(d) for d in cases]
    finally:
        mp.undo()
    assert python_answers == numba_answers
    assert numba_answers[0] is None and numba_answers[2] is None
    assert all(a.startswith("truncated JPEG") for a in numba_answers[1:2] + numba_answers[3:])


def test_the_message_counts_the_blocks():
    data = encode(picture(64, 64, 1), quality=95)  # 4:2:0: 4 x 4 MCUs of 16x16 pixels
    problem = J.jpeg_data_problem(data[: first_scan_data(data)] + EOI)
    assert problem == ("truncated JPEG (scan 1 ends after 0 of its 16 blocks of 16x16 pixels; "
                       "a decoder fills the rest grey)")
    grey = encode(picture(20, 12, 1, grey=True))  # one component: 3 x 2 blocks of 8x8
    assert "after 0 of its 6 blocks of 8x8 pixels" in J.jpeg_data_problem(
        grey[: first_scan_data(grey)] + EOI)


# ----------------------------------------------------------------------------- adversarial
def test_eoi_right_after_the_scan_header_is_truncated():
    for options in ({}, {"progressive": True}):
        data = encode(picture(40, 40, 0), **options)
        assert J.jpeg_data_problem(data[: first_scan_data(data)] + EOI).startswith("truncated JPEG")


def test_a_progressive_file_cut_between_two_scans_is_truncated():
    data = encode(picture(48, 40, 0), progressive=True)
    last_sos = data.rindex(b"\xff\xda")
    # everything but the last scan (and the tables before it): a valid-looking shorter file
    cut = data.rindex(b"\xff\xc4", 0, last_sos) if b"\xff\xc4" in data[:last_sos] else last_sos
    problem = J.jpeg_data_problem(data[:cut] + EOI)
    assert problem is not None and "before every coefficient" in problem
    assert pixels(data[:cut] + EOI).shape == (40, 48, 3)  # what Pillow makes of it: no error


def with_fill_bytes(data: bytes) -> bytes:
    """``data`` with ``FF FF`` fill bytes before every marker (headers, RSTn inside the scans,
    EOI), which the standard allows and libjpeg skips."""
    out = bytearray(data[:2])
    i = 2
    while i < len(data):
        if data[i] == 0xFF and i + 1 < len(data) and data[i + 1] not in (0x00, 0xFF):
            out += b"\xff\xff"
        out.append(data[i])
        i += 1
    return bytes(out)


@pytest.mark.parametrize("options", [{}, {"restart_marker_blocks": 2}, {"progressive": True}])
def test_fill_bytes_before_markers_are_accepted(options):
    data = encode(picture(50, 34, 5), quality=80, **options)
    padded = with_fill_bytes(data)
    assert len(padded) > len(data)
    assert np.array_equal(pixels(padded), pixels(data))  # the same image to libjpeg
    assert J.jpeg_data_problem(padded) is None
    cut = first_scan_data(padded) + (len(padded) - first_scan_data(padded)) // 2
    assert J.jpeg_data_problem(padded[:cut] + b"\xff\xff" + EOI).startswith("truncated JPEG")


def test_trailing_bytes_after_the_end_marker_are_accepted(tmp_path):
    data = encode(picture(33, 47, 2), quality=90)
    rng = np.random.default_rng(0)
    tail = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"\xff\xda\xff\xd9" + EOI
    assert np.array_equal(pixels(data + tail), pixels(data))
    assert J.jpeg_data_problem(data + tail) is None
    path = tmp_path / "tail.jpg"
    path.write_bytes(data + tail)  # more than the 1 KB the end-marker check used to read
    assert image_problem(str(path)) is None
    half = data[: len(data) // 2]
    assert J.jpeg_data_problem(half + EOI + tail).startswith("truncated JPEG")


def test_a_file_without_an_end_marker_is_truncated():
    data = encode(picture(20, 20, 0))
    assert J.jpeg_data_problem(data[:-2]) == "truncated JPEG (no end-of-image marker)"
    assert J.jpeg_data_problem(data[:-40]).startswith("truncated JPEG")


def test_restart_markers_out_of_order_are_corrupt():
    data = bytearray(encode(picture(64, 16, 0), restart_marker_blocks=1))
    first = data.index(b"\xff\xd0")
    data[first + 1] = 0xD3
    assert J.jpeg_data_problem(bytes(data)).startswith("corrupt JPEG (a restart marker")


def test_bits_that_are_no_huffman_code_are_corrupt():
    """160 one-bits (``FF 00`` stuffed twenty times) in the middle of the data: JPEG never gives
    the all-ones pattern a code, so some symbol starts on 16 of them; Pillow decodes it anyway."""
    data = encode(picture(64, 64, 0), quality=90)
    mid = (first_scan_data(data) + len(data)) // 2
    broken = data[:mid] + b"\xff\x00" * 20 + data[mid + 40 :]
    assert pixels(broken).shape == (64, 64, 3)
    assert J.jpeg_data_problem(broken).startswith("corrupt JPEG (bits that are no Huffman code")


def test_kinds_that_are_not_walked_fall_back_to_the_end_marker():
    data = bytearray(encode(picture(24, 24, 0)))
    sof = data.index(b"\xff\xc0")
    data[sof + 1] = 0xC9  # arithmetic coding: not walked
    assert J.jpeg_data_problem(bytes(data)) is None
    assert J.jpeg_data_problem(bytes(data[:-2])) == "truncated JPEG (no end-of-image marker)"
    data[sof + 1] = 0xC0
    data[sof + 5 : sof + 7] = b"\x00\x00"  # height 0: given by a DNL marker, not walked
    assert J.jpeg_data_problem(bytes(data)) is None


def test_motion_jpeg_without_huffman_tables_is_not_walked():
    """A frame that relies on the standard tables (no DHT): libjpeg-turbo supplies them."""
    data = encode(picture(24, 24, 0), quality=90)  # Pillow writes the standard tables
    out, i = bytearray(data[:2]), 2
    while True:
        code, length = data[i + 1], data[i + 2] << 8 | data[i + 3]
        if code == 0xDA:
            out += data[i:]
            break
        if code != 0xC4:
            out += data[i : i + 2 + length]
        i += 2 + length
    assert b"\xff\xc4" not in out[: first_scan_data(bytes(out))]
    assert J.jpeg_data_problem(bytes(out)) is None


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "not a JPEG"),
        (b"\xff\xd8\xff\xd9", "no frame header"),
        (b"\xff\xd8\xff\xc4\x00", "truncated JPEG (a marker segment runs past"),
        (b"\xff\xd8\xff\xc0\x00\x01", "corrupt JPEG (a marker segment of length 1)"),
    ],
)
def test_malformed_headers_are_one_clear_reason(data, words):
    assert words in J.jpeg_data_problem(data)


# ----------------------------------------------------------------------------- where it is used
def test_read_image_and_the_preflight_refuse_a_truncated_jpeg_naming_it(tmp_path):
    data = encode(picture(64, 48, 0), quality=95)
    good, bad = tmp_path / "good.jpg", tmp_path / "trunc_eoi.jpg"
    good.write_bytes(data)
    bad.write_bytes(data[: len(data) // 2] + EOI)
    assert pixels(bad.read_bytes()).shape == (48, 64, 3)  # Pillow: no error, grey blocks
    assert image_problem(str(good)) is None and read_image(str(good)).shape == (48, 64, 3)
    assert image_problem(str(bad)).startswith("truncated JPEG (scan 1 ends after")
    with pytest.raises(ImageUnreadable, match=r"trunc_eoi.jpg: truncated JPEG \(scan 1 ends"):
        read_image(str(bad))


def test_the_answer_for_a_file_is_remembered_until_the_file_changes(tmp_path):
    data = encode(picture(32, 32, 0))
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    assert J.jpeg_problem(str(path)) is None
    path.write_bytes(data[:-30] + EOI)  # another size: walked again
    assert J.jpeg_problem(str(path)).startswith("truncated JPEG")
