"""Proposal sources: the on-disk selective search cache, JSON proposal files, records."""

import json
import os

import numpy as np
import pytest

from minirccn.core.errors import MinirccnError
from minirccn.proposals.selective_search import selective_search
from minirccn.proposals.source import (
    ProposalCache,
    ProposalSource,
    image_digest,
    load_proposal_file,
)


def image(seed=0):
    img = np.zeros((16, 24, 3), np.uint8)
    img[:, :12] = (230, 50, 50)
    img[:, 12:] = (20, 40, 160)
    img[4:9, 3:8] = (250, 250, 250) if seed == 0 else (10, 200, 10)
    return img


def test_selective_search_is_computed_once_per_image(tmp_path, monkeypatch):
    source = ProposalSource("selective-search", min_size=10, cache_dir=str(tmp_path))
    calls = []
    real = source.search.__class__.__call__

    def counting(self, img):
        calls.append(1)
        return real(self, img)

    monkeypatch.setattr(source.search.__class__, "__call__", counting)
    a = source(image())
    b = source(image())
    assert len(calls) == 1 and (a == b).all()
    assert (a == selective_search(image(), "fast", min_size=10)).all()
    files = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert len(files) == 1 and files[0].endswith(".npy")  # no temporary file left
    # a new source on the same folder reads the file; another image or setting misses
    again = ProposalSource("selective-search", min_size=10, cache_dir=str(tmp_path))
    assert (again(image()) == a).all()
    assert again.cache_key(image()) != again.cache_key(image(1))
    other = ProposalSource("selective-search", min_size=20, cache_dir=str(tmp_path))
    assert other.cache_key(image()) != again.cache_key(image())
    other(image())
    assert len([f for _, _, fs in os.walk(tmp_path) for f in fs]) == 2


def test_max_proposals_cuts_the_cached_list(tmp_path):
    full = ProposalSource("selective-search", min_size=10, cache_dir=str(tmp_path))(image())
    few = ProposalSource("selective-search", min_size=10, max_proposals=2, cache_dir=str(tmp_path))
    assert (few(image()) == full[:2]).all()
    assert few.cache_key(image()) == ProposalSource("selective-search", min_size=10).cache_key(
        image()
    )


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    source = ProposalSource("selective-search", min_size=10, cache_dir=str(tmp_path))
    key = source.cache_key(image())
    os.makedirs(os.path.dirname(source.cache.path(key)))
    with open(source.cache.path(key), "wb") as fh:
        fh.write(b"not an npy")
    assert (source(image()) == selective_search(image(), "fast", min_size=10)).all()
    assert ProposalCache(str(tmp_path)).get(key) is not None


def test_image_digest_sees_every_pixel_and_the_shape():
    a = image()
    b = a.copy()
    b[15, 23, 2] ^= 1
    assert image_digest(a) != image_digest(b)
    assert image_digest(a) != image_digest(a.reshape(24, 16, 3))


def test_proposal_file(tmp_path):
    path = tmp_path / "props.json"
    path.write_text(json.dumps({"img7": [[0, 0, 5, 5], [1, 2, 3, 4]], "empty": []}))
    source = ProposalSource(str(path))
    assert source(image(), "img7").tolist() == [[0, 0, 5, 5], [1, 2, 3, 4]]
    assert source(image(), "images/img7.png").tolist() == [[0, 0, 5, 5], [1, 2, 3, 4]]  # stem
    assert source(image(), "empty").shape == (0, 4)
    assert ProposalSource(str(path), max_proposals=1)(image(), "img7").tolist() == [[0, 0, 5, 5]]
    with pytest.raises(MinirccnError, match="no proposals for image 'other'"):
        source(image(), "other")
    rebuilt = ProposalSource.from_record(source.record())
    assert rebuilt.kind == "file" and rebuilt(image(), "img7").shape == (2, 4)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not a readable JSON"),
        ('{"a": [[0, 0, 1]]}', "image 'a'.*shape"),
        ('{"a": [[0, 0, NaN, 1]]}', "NaN"),
        ('{"a": [[5, 0, 1, 1]]}', "x2 < x1"),
        ('{"a": [["x", 0, 1, 1]]}', "list of"),
    ],
)
def test_bad_proposal_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MinirccnError, match=message):
        load_proposal_file(str(path))
    with pytest.raises(MinirccnError, match="not found"):
        load_proposal_file(str(tmp_path / "missing.json"))


def test_record_round_trip_and_bad_settings(tmp_path):
    source = ProposalSource("selective-search", mode="quality", min_size=7, max_proposals=50)
    rec = source.record()
    assert rec == {
        "source": "selective-search",
        "mode": "quality",
        "min_size": 7,
        "sigma": 0.8,
        "seed": 0,
        "max_proposals": 50,
    }
    again = ProposalSource.from_record(json.loads(json.dumps(rec)), cache_dir="")
    assert again.record() == rec and again.cache is None
    with pytest.raises(MinirccnError, match="max-proposals"):
        ProposalSource("selective-search", max_proposals=0)
    with pytest.raises(MinirccnError, match="mode"):
        ProposalSource("selective-search", mode="slow")
    with pytest.raises(MinirccnError, match="proposals"):
        ProposalSource("")
