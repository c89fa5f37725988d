"""Does a JPEG's image data hold every block its frame header promises?

A JPEG cut short inside its image data and closed with an end-of-image marker (``FF D9``)
decodes *without an error*: libjpeg fills the missing blocks grey and only warns, and Pillow
drops the warning. No pixel rule can tell such an image from a real one (a flat grey tail can be
real), so :func:`jpeg_problem` reads the file's structure instead:

1. the markers (Python, a few per file): the frame header ``SOF`` (size, components and their
   sampling factors ``H x V``), the Huffman tables ``DHT``, the restart interval ``DRI`` and each
   scan header ``SOS`` (which components, which coefficients ``Ss..Se``, which bit ``Al``);
2. each scan's entropy-coded data (:func:`walk_scan`, one Numba function): bytes ``FF 00`` are a
   data byte ``FF``, ``RSTn`` markers end a restart interval, any other marker ends the scan. The
   walk decodes just enough of every block to know where it ends (the Huffman symbols; the
   magnitude bits they announce are skipped) and counts the complete MCUs. An MCU ("minimum coded
   unit") of an interleaved scan is ``H x V`` blocks of 8x8 of each of its components, so a frame
   ``X`` wide and ``Y`` high holds ``ceil(X / (8 Hmax)) * ceil(Y / (8 Vmax))`` of them; a scan of
   one component (non-interleaved) codes that component's own blocks one by one,
   ``ceil(ceil(X H / Hmax) / 8) * ceil(ceil(Y V / Vmax) / 8)`` of them.

A scan whose data ends (at a marker or the end of the file) before its last MCU is complete is a
truncated file. The walk follows libjpeg's block loops (the same ``FF`` fill and stuffing rules,
the same end-of-block and end-of-band rules), so an intact file is never flagged. A bit is "real"
only if it comes before the marker (libjpeg pads the rest with zeros), and an encoder pads only
the last byte of a scan or restart interval, with fewer than 8 one-bits, so every data byte holds
a bit the decoder reads: a file cut anywhere inside its data is always found. Bits that are no
Huffman code, and restart markers out of order, are reported as a corrupt file (libjpeg warns
and decodes them as zeros).

What is checked, and what is not:

* sequential Huffman (``SOF0`` baseline, ``SOF1`` extended): every scan complete, every component
  in some scan;
* progressive Huffman (``SOF2``): every scan present is walked exactly (DC first / refinement,
  AC first with its end-of-band runs, AC refinement with each block's history of nonzero
  coefficients), and the scans must bring every coefficient of every component to full precision
  (last ``Al`` 0), so a file cut at a scan boundary is found too. The standard lets an encoder
  leave coefficients out; libjpeg's progression (Pillow's ``progressive=True``) never does, and a
  file that did would be reported here.
* unchecked, only the end marker is looked for: arithmetic coding (``SOF9``-``SOF11``), lossless
  and hierarchical frames, a height given later by a ``DNL`` marker, scans using a Huffman table
  the file never defines (Motion-JPEG frames rely on the standard tables, which libjpeg-turbo
  supplies).

Cost: the walk reads every Huffman code of the file, the same serial work as libjpeg-turbo's own
entropy decoding (without its inverse DCT, upsampling and colour conversion):
``scripts/jpeg_check_cost.py`` measures it next to Pillow's decoding (``docs/misuse-input.md``,
D19). :func:`jpeg_problem` remembers its answer per file, so training walks each JPEG once, in
the check before step 1, and its loader's later reads cost nothing.
"""

from __future__ import annotations

import functools
import math
import os

import numba
import numpy as np

#: what :func:`walk_scan` says about a scan
COMPLETE, ENDED, BAD_CODE, BAD_RESTART = 0, 1, 2, 3
#: the kinds of scan (``mode`` of :func:`walk_scan`)
SEQUENTIAL, DC_FIRST, DC_REFINE, AC_FIRST, AC_REFINE = 0, 1, 2, 3, 4

# ----------------------------------------------------------------------------- the scan's bytes
@numba.njit(cache=True)
def unstuff(data, start):
    """The entropy-coded data of the scan that starts at ``data[start]``, unstuffed and cut at its
    restart markers, as libjpeg reads it: ``FF 00`` (after any ``FF`` fill) is a data byte
    ``FF``; ``FF RSTn`` ends a restart interval; ``FF`` and any other code ends the scan.

    Returns:
        ``(clean, bounds, rst, end)``: ``clean`` ``(L + 64,)`` uint8, the data bytes and 64
        zero bytes (the bit reader loads ahead: at most 80 bits of one AC refinement step, and
        a 4-byte load, past the end before the walk sees it); ``bounds`` ``(S + 2,)`` int64,
        segment ``j`` (restart interval ``j``) is ``clean[bounds[j]:bounds[j + 1]]``; ``rst``
        ``(S,)`` int64, the number ``n`` of the ``RSTn`` after segment ``j``; ``end``: the index
        of the ``FF`` of the marker that ends the scan (``len(data)`` if the file ends first).
    """
    n = data.shape[0]
    clean = np.empty(n - start + 64, np.uint8)  # the tail is zeroed at the end
    bounds = np.empty((n - start) // 2 + 2, np.int64)
    rst = np.empty((n - start) // 2 + 1, np.int64)
    size = 0  # bytes in clean
    segments = 0  # restart markers seen
    bounds[0] = 0
    pos = start
    end = n
    while pos < n:
        b = data[pos]
        if b != 0xFF:
            clean[size] = b
            size += 1
            pos += 1
            continue
        q = pos + 1
        while q < n and data[q] == 0xFF:  # fill bytes
            q += 1
        if q >= n:
            break
        code = data[q]
        if code == 0:  # a stuffed FF
            clean[size] = 0xFF
            size += 1
        elif 0xD0 <= code <= 0xD7:
            rst[segments] = code - 0xD0
            segments += 1
            bounds[segments] = size
        else:
            end = pos
            break
        pos = q + 1
    bounds[segments + 1] = size
    clean[size : size + 64] = 0
    return clean[: size + 64], bounds[: segments + 2], rst[:segments], end


# The bit reader: ``acc`` (int64) holds the next ``nbits`` bits of the data left-aligned, the next
# bit at bit 62 (bit 63 stays 0, so no shift is ever signed); ``q`` is the next byte of ``clean``
# to load, so the bits read so far are ``8 * q - nbits``. Before each code ``acc`` is topped up to
# at least 32 bits, enough for a code (<= 16 bits) and what follows it (<= 16 bits).
LOW63 = (1 << 63) - 1


@numba.njit(cache=True, inline="always")
def _load32(clean, q):
    """The 4 bytes ``clean[q : q + 4]`` as a big-endian number."""
    return ((np.int64(clean[q]) << 24) | (np.int64(clean[q + 1]) << 16)
            | (np.int64(clean[q + 2]) << 8) | np.int64(clean[q + 3]))


@numba.njit(cache=True, inline="always")
def _refill(clean, q, acc, nbits):
    """``acc`` topped up with the next 4 bytes when it holds fewer than 32 bits: the new
    ``(acc, q, nbits)``."""
    if nbits < 32:
        return acc | (_load32(clean, q) << (31 - nbits)), q + 4, nbits + 32
    return acc, q, nbits


@numba.njit(cache=True, inline="always")
def _code(look, t, acc):
    """The entry of row ``t`` of ``look`` for the code ``acc`` begins with: the 9-bit table
    first (in L1 cache), the 16-bit one for longer codes."""
    e = np.int64(look[t, 65536 + ((acc >> 54) & 0x1FF)])
    return e if e != 0 else np.int64(look[t, (acc >> 47) & 0xFFFF])


@numba.njit(cache=True, inline="always")
def _peek(acc, r):
    """The next ``r`` (0..16) bits of ``acc`` as a number."""
    return (acc >> (63 - r)) & ((np.int64(1) << r) - 1)


# ----------------------------------------------------------------------------- one scan
@numba.njit(cache=True)
def walk_scan(clean, bounds, rst, mode, ss, se, restart, mcus_x, mcus_y, blocks_h, blocks_v, dc,
              ac, look, nonzero):
    """Walk the entropy-coded data of one scan (libjpeg's ``decode_mcu*`` loops, with the
    coefficient values dropped) and count its complete MCUs.

    The bits of restart interval ``j`` end at ``lim = 8 * bounds[j + 1]``: a code or a
    magnitude that needs bits past ``lim`` means the data ended inside the block (libjpeg would
    fill it with zero bits).

    Args:
        clean, bounds, rst: the scan's data (:func:`unstuff`).
        mode: ``SEQUENTIAL``, ``DC_FIRST``, ``DC_REFINE``, ``AC_FIRST`` or ``AC_REFINE``.
        ss, se: the scan's first and last coefficient (zigzag order, ``se <= 63``).
        restart: the restart interval in MCUs (0: none).
        mcus_x, mcus_y: the scan's MCU grid.
        blocks_h, blocks_v: ``(Ns,)`` int64, blocks across and down of each scan component in
            one MCU (its ``H, V`` in an interleaved scan, ``1, 1`` in a non-interleaved one).
        dc, ac: ``(Ns,)`` int64, each component's rows of ``look``.
        look: ``(T, 65536 + 512)`` int32, the Huffman tables (:func:`huffman_lookup`).
        nonzero: ``(mcus_x * mcus_y, 64)`` uint8, the component's history of nonzero
            coefficients (zigzag index) in a progressive AC scan: AC refinement reads a
            correction bit for each; a ``(1, 64)`` dummy in other scans.

    Returns:
        ``(done, status)``: the number of complete MCUs; ``COMPLETE``, ``ENDED`` (the data ends
        before MCU ``done`` is complete), ``BAD_CODE`` (MCU ``done`` holds bits that are no
        Huffman code) or ``BAD_RESTART`` (the restart marker after MCU ``done`` is out of order).
    """
    total = mcus_x * mcus_y
    seg = 0
    lim = 8 * bounds[1]
    acc = np.int64(0)
    nbits = np.int64(0)
    q = np.int64(0)
    eobrun = 0  # progressive AC: empty bands still to come
    for m in range(total):
        if restart > 0 and m > 0 and m % restart == 0:  # the next interval, after RSTn
            if seg >= rst.shape[0]:
                return m, ENDED
            if rst[seg] != (m // restart - 1) & 7:
                return m, BAD_RESTART
            seg += 1
            q = bounds[seg]
            lim = 8 * bounds[seg + 1]
            acc = np.int64(0)
            nbits = np.int64(0)
            eobrun = 0
        for c in range(blocks_h.shape[0]):
            for _ in range(blocks_h[c] * blocks_v[c]):
                # ---------------------------------------------------------- one block
                if mode == SEQUENTIAL or mode == DC_FIRST:
                    t = dc[c]  # the DC difference's size s and s bits, then the AC codes
                    k = 0
                    while k < 64:
                        acc, q, nbits = _refill(clean, q, acc, nbits)
                        e = _code(look, t, acc)
                        if e == 0:
                            return m, ENDED if 8 * q - nbits + 16 > lim else BAD_CODE
                        acc = (acc << (e >> 8)) & LOW63  # the code and the s bits after it
                        nbits -= e >> 8
                        if 8 * q - nbits > lim:
                            return m, ENDED
                        if k == 0:
                            if mode == DC_FIRST:
                                break
                            t = ac[c]
                            k = 1
                            continue
                        rs = e & 0xFF  # (run r, size s)
                        if rs & 15 == 0 and rs != 0xF0:  # end of block
                            break
                        k += (rs >> 4) + 1  # r zeros and a coefficient, or 16 zeros (0xF0)
                elif mode == DC_REFINE:  # one bit a block
                    acc, q, nbits = _refill(clean, q, acc, nbits)
                    acc = (acc << 1) & LOW63
                    nbits -= 1
                    if 8 * q - nbits > lim:
                        return m, ENDED
                elif mode == AC_FIRST:
                    if eobrun > 0:  # inside a run of empty bands
                        eobrun -= 1
                        continue
                    k = ss
                    while k <= se:
                        acc, q, nbits = _refill(clean, q, acc, nbits)
                        e = _code(look, ac[c], acc)
                        if e == 0:
                            return m, ENDED if 8 * q - nbits + 16 > lim else BAD_CODE
                        acc = (acc << (e >> 8)) & LOW63
                        nbits -= e >> 8
                        r, s = (e & 0xFF) >> 4, e & 15
                        if s:
                            k += r
                            if k < 64:
                                nonzero[m, k] = 1
                        elif r == 15:
                            k += 15
                        else:  # a run of 2**r + (r more bits) empty bands, this one included
                            eobrun = (1 << r) - 1 + _peek(acc, r)
                            acc = (acc << r) & LOW63
                            nbits -= r
                            k = se
                        if 8 * q - nbits > lim:
                            return m, ENDED
                        k += 1
                else:  # AC_REFINE
                    k = ss
                    while eobrun == 0 and k <= se:
                        acc, q, nbits = _refill(clean, q, acc, nbits)
                        e = _code(look, ac[c], acc)
                        if e == 0 or (e & 15) > 1:
                            return m, ENDED if 8 * q - nbits + 16 > lim else BAD_CODE
                        acc = (acc << (e >> 8)) & LOW63  # the code, the sign of a new coefficient
                        nbits -= e >> 8
                        r, s = (e & 0xFF) >> 4, e & 15
                        if s == 0 and r != 15:  # a run of empty bands starts here
                            eobrun = (1 << r) + _peek(acc, r)
                            acc = (acc << r) & LOW63
                            nbits -= r
                            break
                        while k <= se:  # skip r zero coefficients; nonzero ones: 1 bit each
                            if nonzero[m, k]:
                                acc, q, nbits = _refill(clean, q, acc, nbits)
                                acc = (acc << 1) & LOW63
                                nbits -= 1
                            else:
                                r -= 1
                                if r < 0:
                                    break
                            k += 1
                        if s and k < 64:
                            nonzero[m, k] = 1
                        if 8 * q - nbits > lim:
                            return m, ENDED
                        k += 1
                    if eobrun > 0:  # the rest of the band: a correction bit per nonzero one
                        while k <= se:
                            if nonzero[m, k]:
                                acc, q, nbits = _refill(clean, q, acc, nbits)
                                acc = (acc << 1) & LOW63
                                nbits -= 1
                            k += 1
                        eobrun -= 1
                        if 8 * q - nbits > lim:
                            return m, ENDED
    return total, COMPLETE


# ----------------------------------------------------------------------------- the markers
@functools.lru_cache(maxsize=32)
def huffman_lookup(tc: int, counts: tuple, symbols: tuple) -> np.ndarray | None:
    """The ``(65536 + 512,)`` int32 decoding table of a Huffman table: class ``tc`` (0 DC, 1 AC),
    ``counts`` (how many codes of 1..16 bits) and ``symbols``.

    Entry ``w < 65536`` is ``skip << 8 | symbol`` for the code that the 16 bits ``w`` begin
    with, where ``skip`` is the code's length plus the magnitude bits that follow it (a DC
    symbol is that number of bits, an AC symbol ``r << 4 | s`` is followed by ``s`` bits), or 0
    if the bits begin with no code (or with a DC symbol above 16, which no decoder accepts).
    Entries ``65536 + v`` hold the same for the codes of at most 9 bits, looked up by the next 9
    bits ``v`` (0 for longer codes). Codes are canonical (JPEG spec Annex C): each length's codes
    follow the previous length's, shifted left by one bit.

    Returns None if the table codes more symbols than its lengths allow (a corrupt table).
    Cached: most files share a few tables (the standard ones, an encoder's own).
    """
    table = np.zeros(65536 + 512, np.int32)
    code = k = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            if code >= 1 << length:
                return None
            sym = symbols[k]
            extra = sym if tc == 0 else sym & 15
            if extra <= 16:
                first = code << (16 - length)
                table[first : first + (1 << (16 - length))] = (length + extra) << 8 | sym
                if length <= 9:  # the short codes again, looked up by 9 bits (in L1 cache)
                    first = 65536 + (code << (9 - length))
                    table[first : first + (1 << (9 - length))] = (length + extra) << 8 | sym
            code += 1
            k += 1
        code <<= 1
    table.flags.writeable = False
    return table


class _Unchecked(Exception):
    """A JPEG kind this check does not walk (arithmetic, lossless, DNL, default tables)."""


class _Corrupt(Exception):
    """A malformed marker segment."""


class _Truncated(Exception):
    """A marker segment that runs past the end of the file."""


def _segments(data: np.ndarray):
    """``(code, body_start, body_end)`` of each marker after ``SOI``; ``code`` 0xD9 (``EOI``)
    ends them, -1 if the file ends first. Bytes before a marker that are not ``FF`` are skipped
    (libjpeg warns and skips them too)."""
    n = len(data)
    i = 2
    while True:
        while i < n and data[i] != 0xFF:
            i += 1
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            yield -1, n, n
            return
        code = int(data[i])
        i += 1
        if code == 0xD9:
            yield code, i, i
            return
        if 0xD0 <= code <= 0xD7 or code in (0x01, 0x00):
            continue  # no length (a stray 00 after FF: skipped)
        if i + 2 > n:
            raise _Truncated("a marker segment runs past the end of the file")
        length = int(data[i]) << 8 | int(data[i + 1])
        if length < 2:
            raise _Corrupt(f"a marker segment of length {length}")
        if i + length > n:
            raise _Truncated("a marker segment runs past the end of the file")
        body = (i + 2, i + length)
        i += length
        resume = yield (code, *body)
        if resume is not None:  # the caller walked a scan's data: go on at its end
            i = resume


def _parse_sof(body: np.ndarray):
    if len(body) < 6:
        raise _Corrupt("a short frame header")
    height = int(body[1]) << 8 | int(body[2])
    width = int(body[3]) << 8 | int(body[4])
    nf = int(body[5])
    if nf < 1 or len(body) < 6 + 3 * nf:
        raise _Corrupt("a short frame header")
    comps = {}
    for j in range(nf):
        cid, hv = int(body[6 + 3 * j]), int(body[7 + 3 * j])
        h, v = hv >> 4, hv & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            raise _Corrupt(f"sampling factors {h}x{v}")
        comps[cid] = (j, h, v)
    return width, height, comps


def _parse_dht(body: np.ndarray, tables: dict):
    i = 0
    while i < len(body):
        if i + 17 > len(body):
            raise _Corrupt("a short Huffman table")
        tc, th = int(body[i]) >> 4, int(body[i]) & 15
        counts = [int(c) for c in body[i + 1 : i + 17]]
        total = sum(counts)
        if tc > 1 or th > 3 or total > 256 or i + 17 + total > len(body):
            raise _Corrupt("a malformed Huffman table")
        tables[(tc, th)] = (tuple(counts), tuple(int(s) for s in body[i + 17 : i + 17 + total]))
        i += 17 + total


def jpeg_data_problem(data) -> str | None:
    """Why the JPEG bytes ``data`` are not a complete image, or None (see the module's doc).

    Args:
        data: the file's bytes (``bytes`` or ``(n,)`` uint8).

    Returns:
        ``"truncated JPEG (...)"`` when image data is missing (a scan ends before its last
        MCU, a component or coefficient never comes, no end-of-image marker), ``"corrupt JPEG
        (...)"`` when a segment or the coded data is malformed, else None.
    """
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "not a JPEG file (no start-of-image marker)"
    try:
        return _walk_file(data)
    except _Truncated as exc:
        return f"truncated JPEG ({exc})"
    except _Corrupt as exc:
        return f"corrupt JPEG ({exc})"
    except _Unchecked:  # only the end marker can be looked for
        if b"\xff\xd9" not in data[-1024:].tobytes():
            return "truncated JPEG (no end-of-image marker)"
        return None


def _walk_file(data: np.ndarray) -> str | None:
    tables: dict = {}
    restart = 0
    frame = None  # (width, height, {component id: (index, H, V)}, progressive)
    scans = 0
    seen = set()  # sequential: the components some scan coded
    coef_al = None  # progressive: (components, 64) the last Al each coefficient was sent with
    nonzero = {}  # progressive: each component's (blocks, 64) nonzero history
    segments = _segments(data)
    resume = None
    while True:
        code, b0, b1 = segments.send(resume)
        resume = None
        body = data[b0:b1]
        if code == -1:
            return "truncated JPEG (no end-of-image marker)"
        if code == 0xD9:
            break
        try:  # a malformed segment that swallowed the end marker is a truncated file
            if code in (0xC0, 0xC1, 0xC2):
                if frame is not None:
                    raise _Corrupt("two frame headers")
                width, height, comps = _parse_sof(body)
                if height == 0:  # the height comes in a DNL marker after the first scan
                    raise _Unchecked
                if width == 0:
                    raise _Corrupt("a frame 0 pixels wide")
                frame = (width, height, comps, code == 0xC2)
                coef_al = np.full((len(comps), 64), -1, np.int64)
            elif 0xC3 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
                raise _Unchecked  # lossless, hierarchical or arithmetic-coded
            elif code == 0xC4:
                _parse_dht(body, tables)
            elif code == 0xDD:
                if len(body) < 2:
                    raise _Corrupt("a short restart interval")
                restart = int(body[0]) << 8 | int(body[1])
            elif code == 0xDA:
                if frame is None:
                    raise _Corrupt("a scan before the frame header")
                scans += 1
                result = _walk_one_scan(data, body, b1, frame, tables, restart, scans, seen,
                                        coef_al, nonzero)
                if isinstance(result, str):
                    return result
                resume = result
        except _Corrupt:
            if b"\xff\xd9" not in data[b1:].tobytes():
                raise _Truncated("no end-of-image marker") from None
            raise
    if frame is None:
        return "truncated JPEG (no frame header before the end-of-image marker)"
    width, height, comps, progressive = frame
    if not progressive:
        missing = [j + 1 for cid, (j, _, _) in comps.items() if cid not in seen]
        if missing:
            return (f"truncated JPEG (no image data for component {missing[0]} of {len(comps)} "
                    f"after {scans} scan{'s' if scans != 1 else ''})")
        return None
    for j in range(len(comps)):
        if (coef_al[j] != 0).any():
            return (f"truncated JPEG (its progressive image data stops after {scans} "
                    f"scan{'s' if scans != 1 else ''}, before every coefficient of component "
                    f"{j + 1} of {len(comps)} is complete)")
    return None


def _walk_one_scan(data, body, start, frame, tables, restart, number, seen, coef_al, nonzero):
    """Walk the scan whose ``SOS`` body is ``body``: the index its data ends at, or the
    problem."""
    width, height, comps, progressive = frame
    if len(body) < 1 or len(body) < 1 + 2 * int(body[0]) + 3:
        raise _Corrupt("a short scan header")
    ns = int(body[0])
    sel = []
    for j in range(ns):
        cid, td_ta = int(body[1 + 2 * j]), int(body[2 + 2 * j])
        if cid not in comps:
            raise _Corrupt(f"a scan of component {cid}, which the frame does not have")
        sel.append((cid, td_ta >> 4, td_ta & 15))
    ss, se, ahl = (int(x) for x in body[1 + 2 * ns : 4 + 2 * ns])
    ah, al = ahl >> 4, ahl & 15
    hmax = max(h for _, h, _ in comps.values())
    vmax = max(v for _, _, v in comps.values())
    if not progressive:
        mode = SEQUENTIAL
    elif ss == 0:
        mode = DC_FIRST if ah == 0 else DC_REFINE
    else:
        mode = AC_FIRST if ah == 0 else AC_REFINE
        if ns != 1 or se > 63 or ss > se:
            raise _Corrupt(f"scan {number}: an AC scan of {ns} components, coefficients {ss}..{se}")
    # the tables this scan decodes with
    need = set()
    for _, td, ta in sel:
        if mode in (SEQUENTIAL, DC_FIRST):
            need.add((0, td))
        if mode in (SEQUENTIAL, AC_FIRST, AC_REFINE):
            need.add((1, ta))
    if any(t not in tables for t in need):
        raise _Unchecked  # the standard tables of Motion-JPEG (libjpeg-turbo's default)
    used = sorted(need)
    look = _stacked_lookups(tuple((t[0], tables[t]) for t in used))
    if look is None:
        raise _Corrupt("a Huffman table with more codes than its lengths allow")
    row = {t: i for i, t in enumerate(used)}
    if ns == 1:  # non-interleaved: the component's own blocks, one an MCU
        _, h, v = comps[sel[0][0]]
        mcus_x = math.ceil(math.ceil(width * h / hmax) / 8)
        mcus_y = math.ceil(math.ceil(height * v / vmax) / 8)
        bh = bv = np.ones(1, np.int64)
        pixels = f"{8 * hmax // h}x{8 * vmax // v}"
    else:
        mcus_x = math.ceil(width / (8 * hmax))
        mcus_y = math.ceil(height / (8 * vmax))
        bh = np.array([comps[cid][1] for cid, _, _ in sel], np.int64)
        bv = np.array([comps[cid][2] for cid, _, _ in sel], np.int64)
        pixels = f"{8 * hmax}x{8 * vmax}"
    dc = np.array([row.get((0, td), 0) for _, td, _ in sel], np.int64)
    ac = np.array([row.get((1, ta), 0) for _, _, ta in sel], np.int64)
    if mode in (AC_FIRST, AC_REFINE):
        cid = sel[0][0]
        if cid not in nonzero:
            nonzero[cid] = np.zeros((mcus_x * mcus_y, 64), np.uint8)
        nz = nonzero[cid]
    else:
        nz = np.zeros((1, 64), np.uint8)
    clean, bounds, rst, end = unstuff(data, start)
    done, status = walk_scan(clean, bounds, rst, mode, ss, min(se, 63), restart, mcus_x, mcus_y,
                             bh, bv, dc, ac, look, nz)
    total = mcus_x * mcus_y
    where = f"scan {number}" + (" of its progressive image data" if progressive else "")
    if status == ENDED:
        return (f"truncated JPEG ({where} ends after {done} of its {total} blocks of {pixels} "
                f"pixels; a decoder fills the rest grey)")
    if status == BAD_CODE:
        return (f"corrupt JPEG (bits that are no Huffman code in block {done + 1} of {total}, "
                f"{where})")
    if status == BAD_RESTART:
        return (f"corrupt JPEG (a restart marker out of order after block {done}, "
                f"{where})")
    for cid, _, _ in sel:
        seen.add(cid)
        if progressive:  # the bit each coefficient of the scan is now known to
            lo, hi = (0, 0) if mode in (DC_FIRST, DC_REFINE) else (ss, min(se, 63))
            coef_al[comps[cid][0], lo : hi + 1] = al
    return end


@functools.lru_cache(maxsize=16)
def _stacked_lookups(tables: tuple):
    """``(T, 65536 + 512)`` int32: :func:`huffman_lookup` of each ``(class, (counts, symbols))`` in
    ``tables``, one row each (None if one is corrupt); ``(1, 1)`` zeros for a scan that needs
    none (DC refinement)."""
    if not tables:
        return np.zeros((1, 1), np.int32)
    rows = [huffman_lookup(tc, *t) for tc, t in tables]
    return None if any(r is None for r in rows) else np.stack(rows)


def jpeg_problem(path: str) -> str | None:
    """:func:`jpeg_data_problem` of the file at ``path``, remembered for the file as it is now
    (its size, modification time and inode): the preflight walks each JPEG once, and the
    loader's later reads of it cost nothing."""
    st = os.stat(path)
    return _file_problem(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=1 << 16)
def _file_problem(path: str, size: int, mtime_ns: int, inode: int) -> str | None:
    return jpeg_data_problem(np.fromfile(path, np.uint8))
