"""An index file is not trusted: stored paths that leave the catalogue, metadata of the wrong
shape, corrupt or truncated files, another format: refused in one line before any catalogue
file is read or inlined. The indexes here are forged with faiss and numpy (no model runs): the
model file is any file, whose SHA-256 the metadata records.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clothopt.cli import main
from clothopt.errors import ClothoptError, DataError
from clothopt.similar import INDEX_FORMAT, catalogue_files, catalogue_fingerprint
from clothopt.similar_index import load_index

SECRET = "the contents of a file outside the catalogue"


@dataclass
class World:
    """A catalogue folder with images and links, a secret file beside it, a model file."""

    base: Path
    root: Path
    model: Path
    secret: Path
    images: list[str]  # relative paths of the catalogue's images


def make_world(base: Path) -> World:
    root = base / "catalogue"
    for i, rel in enumerate(["a/x.png", "a/y.png", "b/c/z.png"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (9, 7, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    secret = base / "secret.png"
    secret.write_text(SECRET)
    outside = base / "elsewhere"
    outside.mkdir()
    (outside / "w.png").write_text(SECRET)
    (root / "out").symlink_to(outside)  # a folder link leaving the catalogue
    (root / "leak.png").symlink_to(secret)  # a file link leaving it
    (root / "in").symlink_to(root / "a")  # a link that stays inside
    (root / "loop").symlink_to(root / "loop")
    model = base / "model.keras"
    model.write_bytes(b"any bytes: load_index only hashes the model file")
    return World(base, root, model, secret, ["a/x.png", "a/y.png", "b/c/z.png"])


def forge(world: World, paths: list[str], out: Path, **meta_changes: Any) -> Path:
    """An index file as build_index writes it, with ``paths`` stored and ``meta_changes``."""
    import faiss

    dims = 4
    index = faiss.IndexFlatIP(dims)
    vectors = np.random.default_rng(0).normal(size=(len(paths), dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add(vectors)
    images, _ = catalogue_files(world.root)
    meta = {
        "format": INDEX_FORMAT,
        "model": str(world.model),
        "model_sha256": hashlib.sha256(world.model.read_bytes()).hexdigest(),
        "catalogue": str(world.root),
        "catalogue_fingerprint": catalogue_fingerprint(world.root, images),
        "embedding": "pooled+probs",
        "class_weight": 0.5,
        "temperature": 0.1,
        "dims": dims,
        "count": len(paths),
        "index_type": "IndexFlatIP",
    } | meta_changes
    np.savez(
        out,
        index=faiss.serialize_index(index),
        paths=np.array(paths, dtype=np.str_),
        meta=np.array(json.dumps(meta)),
    )
    return out


@contextlib.contextmanager
def scratch() -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="co-") as d:
        yield make_world(Path(d))


def test_an_index_of_the_catalogue_loads(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    assert catalogue_files(world.root)[0] == [world.root / p for p in world.images]
    index = load_index(forge(world, world.images, tmp_path / "i.npz"))
    assert index.paths == world.images and index.root == world.root
    # a link that stays inside the catalogue is a path of it (its target is inside too)
    load_index(forge(world, ["in/x.png"], tmp_path / "j.npz"), check_catalogue=False)


LEAVING = [
    "../secret.png",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "a/../../secret.png",
    "out/w.png",  # through a folder link
    "leak.png",  # a file link
    "loop",
    "./a/x.png",  # not as build_index writes paths
    "a//x.png",
    "",
    "a/\x00x.png",
]


@pytest.mark.parametrize("stored", LEAVING)
def test_a_stored_path_outside_the_catalogue_is_refused(tmp_path: Path, stored: str) -> None:
    world = make_world(tmp_path)
    index = forge(world, [*world.images, stored], tmp_path / "i.npz")
    for check_catalogue in (True, False):
        with pytest.raises(DataError, match=r"not inside the catalogue folder") as info:
            load_index(index, check_catalogue=check_catalogue)
        assert len(str(info.value).splitlines()) == 1 and SECRET not in str(info.value)


def _leaves(root: Path, rel: str) -> bool:
    """The oracle, by os.path (not pathlib as the code): the path a reader would open, after
    every link, is not under the catalogue; or the name is not a plain relative path."""
    if not rel or "\x00" in rel or os.path.isabs(rel):
        return True
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return True
    try:
        os.stat(os.path.join(root, rel))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link loop names no file at all
            return True
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, rel))
    return os.path.commonpath([real_root, target]) != real_root


_PARTS = st.sampled_from(["..", ".", "", "a", "b", "c", "x.png", "z.png", "out", "in", "loop"])
_STORED = st.one_of(
    st.builds(
        lambda lead, parts: lead + "/".join(parts),
        st.sampled_from(["", "/", "//"]),
        st.lists(_PARTS, min_size=1, max_size=5),
    ),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.lists(_STORED, min_size=1, max_size=4))
def test_generated_stored_paths_load_only_when_inside(stored: list[str]) -> None:
    stored = [p.rstrip("\x00") for p in stored]  # numpy's str arrays drop trailing NULs
    with scratch() as world:
        index = forge(world, stored, world.base / "i.npz")
        leaving = [p for p in stored if _leaves(world.root, p)]
        try:
            loaded = load_index(index, check_catalogue=False)
        except DataError as exc:
            assert leaving, f"refused a path inside: {exc}"
            assert "not inside the catalogue folder" in str(exc)
            assert repr(leaving[0]) in str(exc)
            return
        assert not leaving
        for rel in loaded.paths:  # what similar would read and inline: inside, every one
            real = os.path.realpath(world.root / rel)
            assert os.path.commonpath([os.path.realpath(world.root), real]) == str(
                os.path.realpath(world.root)
            )
        # with the catalogue checked, only the catalogue's own images are accepted
        try:
            load_index(index)
        except DataError as exc:
            assert "is stale: catalogue" in str(exc)
            assert not set(stored) <= set(world.images)
        else:
            assert set(stored) <= set(world.images)


def _meta_value() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(), scalars))


META_KEYS = [
    "format",
    "model",
    "model_sha256",
    "catalogue",
    "catalogue_fingerprint",
    "embedding",
    "class_weight",
    "temperature",
    "dims",
    "count",
    "nprobe",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(META_KEYS), _meta_value(), min_size=1))
def test_metadata_of_any_shape_is_one_line(changes: dict[str, Any]) -> None:
    with scratch() as world:
        index = forge(world, world.images, world.base / "i.npz", **changes)
        try:
            load_index(index)
        except ClothoptError as exc:
            assert len(str(exc).splitlines()) == 1 and SECRET not in str(exc)
        # anything else (KeyError, TypeError, ...) fails the test


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupt_or_truncated_index_is_one_line(data: st.DataObject) -> None:
    with scratch() as world:
        good = forge(world, world.images, world.base / "i.npz").read_bytes()
        how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
        if how == "truncate":
            blob = good[: data.draw(st.integers(0, len(good) - 1))]
        elif how == "flip":
            at = data.draw(st.integers(0, len(good) - 1))
            blob = good[:at] + bytes([good[at] ^ data.draw(st.integers(1, 255))]) + good[at + 1 :]
        else:
            blob = data.draw(st.binary(max_size=400))
        bad = world.base / "bad.npz"
        bad.write_bytes(blob)
        try:
            load_index(bad)
        except ClothoptError as exc:
            assert len(str(exc).splitlines()) == 1
        else:
            assert how == "flip"  # a flip in a part nothing reads (a zip comment, padding)


def test_an_index_of_another_format_or_kind_is_one_line(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    for fmt in (1, 2, INDEX_FORMAT + 1):
        old = forge(world, world.images, tmp_path / f"f{fmt}.npz", format=fmt)
        with pytest.raises(DataError, match=rf"format {fmt}; this clothopt reads format 3"):
            load_index(old)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))  # a numpy archive, not an index
    with pytest.raises(DataError, match="not a readable similar-item index"):
        load_index(other)


# --------------------------------------------------------------------------- the command


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("stored", ["../secret.png", "/etc/passwd", "leak.png", "out/w.png"])
def test_similar_refuses_an_index_leaving_the_catalogue_and_writes_nothing(
    tmp_path: Path, stored: str
) -> None:
    world = make_world(tmp_path)
    index = forge(world, [*world.images, stored], tmp_path / "i.npz")
    page = tmp_path / "page.html"
    before = _digests(tmp_path)
    for extra in ([], ["--json"], ["--html", str(page)]):
        code, out, err = _run(["similar", str(index), str(world.root / "a/x.png"), *extra])
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.count("\n") == 1 and "not inside the catalogue folder" in err, err
        assert SECRET not in err
    assert not page.exists() and _digests(tmp_path) == before


@pytest.mark.parametrize("how", ["truncated", "garbage", "format 2", "no paths"])
def test_similar_on_a_broken_index_is_one_line(tmp_path: Path, how: str) -> None:
    world = make_world(tmp_path)
    index = forge(
        world, world.images, tmp_path / "i.npz", **({"format": 2} if how[0] == "f" else {})
    )
    if how == "truncated":
        index.write_bytes(index.read_bytes()[:300])
    elif how == "garbage":
        index.write_bytes(b"\x93NUMPY not an archive")
    elif how == "no paths":
        with np.load(index) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "paths"}
        np.savez(index, **arrays)
    code, out, err = _run(["similar", str(index), str(world.root / "a/x.png")])
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("clothopt: error: ")


def test_index_build_leaves_out_links_that_leave_the_catalogue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(tmp_path)
    images, skipped = catalogue_files(world.root)
    # folder links are not walked; leak.png leaves, loop is no file: both skipped
    assert [p.relative_to(world.root).as_posix() for p in images] == world.images
    assert skipped == 2
    assert "left out 1 file(s)" in caplog.text and "link to outside" in caplog.text
