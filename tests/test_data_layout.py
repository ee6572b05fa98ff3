"""open_dataset: class order, file order, labels, layout errors and fingerprints."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clothopt.data import check
from clothopt.data.layout import SPLITS, open_dataset
from clothopt.errors import DataError, UserError

CLASSES = ("shirt", "hat", "pants")  # deliberately not sorted


def make_tree(root: Path, n: int = 3, seed: int = 0) -> Path:
    """root/<split>/<class>/img_<i>.png with small random images."""
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in reversed(range(n)):  # written out of order on purpose
                pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root


def test_classes_files_and_labels(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    (root / "train" / "hat" / "notes.txt").write_text("not an image")
    (root / "train" / "hat" / "UPPER.JPG").write_bytes(
        (root / "train" / "hat" / "img_0.png").read_bytes()
    )
    ds = open_dataset(root)
    assert ds.classes == ("hat", "pants", "shirt")
    assert set(ds.splits) == set(SPLITS)
    train = ds["train"]
    names = [p.relative_to(train.root).as_posix() for p in train.paths]
    assert names == [
        "hat/UPPER.JPG",
        "hat/img_0.png",
        "hat/img_1.png",
        "hat/img_2.png",
        "pants/img_0.png",
        "pants/img_1.png",
        "pants/img_2.png",
        "shirt/img_0.png",
        "shirt/img_1.png",
        "shirt/img_2.png",
    ]
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert train.class_counts() == {"hat": 4, "pants": 3, "shirt": 3}
    assert len(ds["test"]) == 9


def test_only_some_splits(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    shutil.rmtree(root / "test")
    ds = open_dataset(root, splits=("train", "validation"))
    assert set(ds.splits) == {"train", "validation"}
    with pytest.raises(UserError, match="no 'test' split"):
        ds["test"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: shutil.rmtree(r / "validation"), "no validation/ split"),
        (lambda r: shutil.rmtree(r / "validation" / "hat"), "missing hat"),
        (lambda r: (r / "test" / "socks").mkdir(), "not in train: socks"),
        (lambda r: shutil.rmtree(r / "train"), "no train/ folder"),
        (lambda r: [shutil.rmtree(r / "train" / c) for c in ("hat", "pants")], "two class"),
        (lambda r: [p.unlink() for p in (r / "test").rglob("*.png")], "of the test split has no"),
    ],
)
def test_layout_errors(tmp_path: Path, breakage, message: str) -> None:
    root = make_tree(tmp_path / "data")
    breakage(root)
    with pytest.raises(UserError, match=message) as info:
        open_dataset(root)
    assert "\n" not in str(info.value)


def test_path_not_found(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not found"):
        open_dataset(tmp_path / "file")


def test_fingerprint_is_stable_and_sensitive(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    fp = open_dataset(root).fingerprint
    assert len(fp) == 64

    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(root, copy)
    assert open_dataset(copy).fingerprint == fp
    (copy / "train" / "hat" / "notes.txt").write_text("ignored, like flow_from_directory")
    assert open_dataset(copy).fingerprint == fp

    image = copy / "validation" / "pants" / "img_1.png"
    data = bytearray(image.read_bytes())
    data[-20] ^= 1  # one byte of one image
    image.write_bytes(bytes(data))
    changed = open_dataset(copy).fingerprint
    assert changed != fp
    assert open_dataset(copy)["train"].fingerprint == open_dataset(root)["train"].fingerprint

    renamed = tmp_path / "c"
    shutil.copytree(root, renamed)
    (renamed / "test" / "shirt" / "img_2.png").rename(renamed / "test" / "shirt" / "img_9.png")
    assert open_dataset(renamed).fingerprint not in (fp, changed)


def test_moving_an_image_between_classes_changes_fingerprint(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    fp = open_dataset(root).fingerprint
    (root / "train" / "hat" / "img_0.png").rename(root / "train" / "pants" / "img_9.png")
    assert open_dataset(root).fingerprint != fp


def test_broken_link_is_one_user_error_not_a_crash(tmp_path: Path) -> None:
    from clothopt.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", counts=(2, 1, 1))
    (root / "validation" / "pants" / "zz.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(
        UserError, match=r"zz\.jpg is a broken symbolic link \(run `clothopt data check`"
    ):
        open_dataset(root)


# --------------------------------------------------------------------------- empty classes

_LAYOUTS = st.fixed_dictionaries(
    {
        split: st.fixed_dictionaries(
            # per class: (images, other files): a folder of notes alone holds no images
            {cls: st.tuples(st.integers(0, 2), st.integers(0, 1)) for cls in CLASSES}
        )
        for split in SPLITS
    }
)


@settings(max_examples=60, deadline=None)
@given(layout=_LAYOUTS)
def test_a_class_with_no_images_in_any_split_is_refused_as_data_check_sees_it(
    layout: dict[str, dict[str, tuple[int, int]]],
) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for split, classes in layout.items():
            for cls, (images, others) in classes.items():
                folder = root / split / cls
                folder.mkdir(parents=True)
                for i in range(images):
                    Image.fromarray(np.full((4, 5, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
                for i in range(others):
                    (folder / f"note{i}.txt").write_text("not an image")
        empty = [
            (split, cls)
            for split in SPLITS
            for cls in sorted(CLASSES)
            if layout[split][cls][0] == 0
        ]
        report = check(root)
        assert report.usable == (not empty)
        assert {
            (p.path.parent.name, p.path.name) for p in report.problems if p.kind == "empty-class"
        } == set(empty)
        if not empty:
            assert len(open_dataset(root).classes) == len(CLASSES)
            return
        with pytest.raises(DataError) as info:
            open_dataset(root)
        split, cls = empty[0]
        message = str(info.value)
        assert f"class {cls!r} of the {split} split has no images" in message
        assert len(message.splitlines()) == 1
        # asked for the splits without an empty class only, the set opens
        usable = tuple(s for s in SPLITS if not any(e[0] == s for e in empty))
        if "train" in usable:
            assert set(open_dataset(root, usable).splits) == set(usable)
