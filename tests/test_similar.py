"""Similar items: index build/query round trip, stale indexes refused, CLI mistakes in one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothopt.cli import main
from clothopt.errors import UserError
from clothopt.predict import CLASSES_FILE, load_classifier
from clothopt.similar import (
    CLASS_WEIGHT,
    INDEX_FORMAT,
    TEMPERATURE,
    build_index,
    embed_arrays,
    embedder,
    embedding_taps,
    query,
)
from clothopt.similar_html import write_html
from clothopt.similar_index import load_index
from conftest import save_tiny_model

CLASSES = ["hat", "pants", "shoes", "skirt"]


def _save_model(folder: Path, seed: int) -> Path:
    """An exported model as finalize builds it (random base, 32 px: fast), random head."""
    return save_tiny_model(folder, CLASSES, seed=seed)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), 0)


def _catalogue(root: Path, n: int = 6) -> list[Path]:
    """Distinct pictures (stripes of different widths and colours, varied sizes), nested."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        h, w = 30 + 7 * i, 45 - 3 * i
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        img[:, :: i + 2] = (40 * i, 255 - 30 * i, 128)
        path = root / ("a" if i % 2 else "b/c") / f"item{i}.png"  # any layout, recursive
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_embeddings_are_unit_vectors_and_pooled_is_cosine() -> None:
    rng = np.random.default_rng(0)
    pooled, logits = rng.random((5, 8)) * 3, rng.normal(0, 4, (5, 3))
    for name in ("pooled", "pooled+probs"):
        e = embed_arrays(pooled, logits, name)
        assert e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    cos = pooled @ pooled.T / np.outer(*(2 * [np.linalg.norm(pooled, axis=1)]))
    e = embed_arrays(pooled, logits, "pooled")
    np.testing.assert_allclose(e @ e.T, cos, atol=1e-6)
    # pooled+probs: (1 - w) visual cosine + w Bhattacharyya coefficient of softmax(logits / T)
    for w, t in ((CLASS_WEIGHT, TEMPERATURE), (0.5, 1.0), (0.3, 2.0)):
        z = np.exp(logits / t)
        bc = np.sqrt(z / z.sum(1, keepdims=True)) @ np.sqrt(z / z.sum(1, keepdims=True)).T
        e = embed_arrays(pooled, logits, "pooled+probs", w, t)
        np.testing.assert_allclose(e @ e.T, (1 - w) * cos + w * bc, atol=1e-6)
    np.testing.assert_array_equal(
        embed_arrays(pooled, logits), embed_arrays(pooled, logits, "pooled+probs", 0.5, 0.1)
    )
    with pytest.raises(UserError, match="unknown embedding"):
        embed_arrays(pooled, logits, "nope")


def test_the_shipped_embedding_puts_the_class_first_and_keeps_the_look_within_it() -> None:
    """Items the model puts in the query's class come first, in the order of visual cosine;
    even a visually closer item of another class comes after them."""
    cos = np.array([0.95, 0.90, 0.85, 0.60, 0.97, 0.80])  # each item's cosine to the query
    looks = np.zeros((6, 8))
    looks[:, 0], looks[range(6), range(1, 7)] = cos, np.sqrt(1 - cos**2)
    query_look = np.eye(8)[:1]
    # the model: items 0-3 in the query's class (item 1 barely), items 4 and 5 in the other
    logits = np.array([[4.0, 0], [0.5, 0], [4.0, 0], [3.0, 0], [0, 3.0], [0, 2.0]])
    q = embed_arrays(query_look, np.array([[3.0, 0]]))
    order = np.argsort(-(embed_arrays(looks, logits) @ q.T)[:, 0]).tolist()
    assert order == [0, 1, 2, 3, 4, 5]  # item 4 looks closest, but is of another class
    # the previous embedding (plain softmax) let the model's doubt about item 1 reorder the class
    previous = (embed_arrays(looks, logits, "pooled+probs", 0.5, 1.0) @ q.T)[:, 0]
    assert np.argsort(-previous).tolist()[:4] == [0, 2, 1, 3]


def test_the_embedding_reads_the_logits_the_model_answers_with(tmp_path: Path) -> None:
    """A model with test-time augmentation answers with the mean of the image's and its
    mirror's logits ("tta_logits"): the embedding's class half comes from those."""
    import keras

    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import Head, compose

    kernel = np.random.default_rng(0).normal(0, 1e16, (256, 3)).astype("float32")
    head = Head(num_classes=3, weights=[kernel, np.zeros(3, "float32")])
    spec = get_backbone("mobilenet_025")
    model = compose(spec, 32, "none", 0, raw_input=True, head=head, softmax=True, tta=True)
    image = np.random.default_rng(1).integers(0, 256, (1, 40, 30, 3)).astype("uint8")
    pooled, logits = embedding_taps(model).predict_on_batch(image)
    layers = ("pool", "tta_logits", "logits")
    want_pool, tta, plain = keras.Model(
        model.inputs, [model.get_layer(n).output for n in layers]
    ).predict_on_batch(image)
    np.testing.assert_array_equal(pooled, want_pool)
    np.testing.assert_array_equal(logits, tta)
    assert not np.allclose(tta, plain)  # the mirror changed something: the test can fail


def test_an_ensembles_class_half_comes_from_its_averaged_probabilities(tmp_path: Path) -> None:
    """An ensemble answers with the average of its members' probabilities (no single logits
    layer): the taps give their log, whose softmax is that average; for one head the log of
    its softmax gives the class half its logits give."""
    import keras

    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import Head, compose

    rng = np.random.default_rng(0)
    heads = [
        Head(num_classes=3, weights=[rng.normal(0, 3e15, (256, 3)).astype("float32"),
                                     np.zeros(3, "float32")])
        for _ in range(3)
    ]  # fmt: skip
    spec = get_backbone("mobilenet_025")
    model = compose(spec, 32, "none", 0, raw_input=True, head=heads, softmax=True, tta=True)
    image = rng.integers(0, 256, (1, 40, 30, 3)).astype("uint8")
    pooled, logits = embedding_taps(model).predict_on_batch(image)
    want_pool, probabilities = keras.Model(
        model.inputs, [model.get_layer(n).output for n in ("pool", "probabilities")]
    ).predict_on_batch(image)
    np.testing.assert_array_equal(pooled, want_pool)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probabilities, rtol=1e-5)
    assert not np.allclose(probabilities, probabilities[:, :1])  # not uniform: it can fail
    # for one head, its log-probabilities give the embedding its logits give (float rounding)
    one = compose(spec, 32, "none", 0, raw_input=True, head=heads[0], softmax=True)
    pool_one, logits_one = embedding_taps(one).predict_on_batch(image)
    p_one = keras.Model(one.inputs, one.get_layer("probabilities").output).predict_on_batch(image)
    np.testing.assert_allclose(
        embed_arrays(pool_one, np.log(p_one)), embed_arrays(pool_one, logits_one), atol=1e-6
    )


def test_build_and_query_round_trip(model_file: Path, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    images = _catalogue(cat)
    (cat / "notes.txt").write_text("not an image")
    (cat / "a" / "broken.jpg").write_text("not a JPEG either")
    out = tmp_path / "idx" / "similar.npz"
    logged: list[str] = []
    result = build_index(model_file, cat, out, log=logged.append)
    assert (result.images, result.skipped, len(result.failed)) == (len(images), 1, 1)
    assert "broken.jpg" in result.failed[0] and "broken.jpg" in logged[0]
    assert [p.name for p in out.parent.iterdir()] == ["similar.npz"]  # no temporary left

    with np.load(out, allow_pickle=False) as npz:  # plain arrays: no pickle needed to read it
        meta = json.loads(str(npz["meta"]))
    assert meta["embedding"] == "pooled+probs" and meta["dims"] == 256 + len(CLASSES)
    assert (meta["class_weight"], meta["temperature"]) == (CLASS_WEIGHT, TEMPERATURE)
    assert (meta["format"], meta["index_type"]) == (INDEX_FORMAT, "IndexFlatIP")
    assert meta["count"] == len(images) and len(meta["model_sha256"]) == 64

    index = load_index(out)
    assert sorted(index.paths) == sorted(p.relative_to(cat).as_posix() for p in images)
    model, _ = load_classifier(model_file)
    results = query(index, model, images, k=3)
    for image, hits in zip(images, results, strict=True):
        assert len(hits) == 3
        assert Path(hits[0].path) == image  # the query itself, found first
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].score > hits[1].score >= hits[2].score
    # the scores are the embeddings' inner products, as numpy computes them
    embed = embedder(model)
    from clothopt.data import load_image

    q = embed(load_image(images[0], None))
    for hit in results[0]:
        assert hit.score == pytest.approx(float(q @ embed(load_image(hit.path, None))), abs=1e-5)
    # a picture not in the catalogue still gets k answers; k above the size gives all
    assert len(query(index, model, [np.full((20, 20, 3), 90, np.uint8)], k=50)[0]) == len(images)


def test_stale_index_is_refused(model_file: Path, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    images = _catalogue(cat, 3)
    model = tmp_path / "m" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(model_file.read_bytes())
    (model.parent / CLASSES_FILE).write_text(json.dumps(CLASSES))
    out = tmp_path / "similar.npz"
    build_index(model, cat, out)
    load_index(out)  # fresh: accepted

    other = _save_model(tmp_path / "other", 1)
    with pytest.raises(UserError, match=r"stale: model .* not the one"):
        load_index(out, other)  # another model given
    model.write_bytes(other.read_bytes())  # the model re-finalized in place
    with pytest.raises(UserError, match=r"stale: model"):
        load_index(out)
    model.write_bytes(model_file.read_bytes())
    load_index(out)

    st = images[0].stat()
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, not edited
    load_index(out)
    # an edit that keeps the size and the modification time: the content hash sees it
    original = images[0].read_bytes()
    edited = bytearray(original)
    edited[-20] ^= 0xFF
    images[0].write_bytes(bytes(edited))
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert images[0].stat().st_size == st.st_size
    with pytest.raises(UserError, match=r"stale: catalogue"):
        load_index(out)
    assert load_index(out, check_catalogue=False).meta["count"] == 3
    images[0].write_bytes(original)
    load_index(out)
    (cat / "new.png").write_bytes(images[1].read_bytes())  # an image added
    with pytest.raises(UserError, match=r"stale: catalogue"):
        load_index(out)

    # an index of the previous format (another embedding) is refused, not misread
    with np.load(out, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"])) | {"format": 1}
    old = tmp_path / "old.npz"
    np.savez(old, **arrays | {"meta": np.array(json.dumps(meta))})
    with pytest.raises(
        UserError, match=rf"index of format 1; this clothopt reads format {INDEX_FORMAT}: rebuild"
    ):
        load_index(old, check_catalogue=False)


def test_html_page_is_self_contained(model_file: Path, tmp_path: Path) -> None:
    images = _catalogue(tmp_path / "cat", 4)
    build_index(model_file, tmp_path / "cat", tmp_path / "i.npz")
    index = load_index(tmp_path / "i.npz")
    results = query(index, load_classifier(model_file)[0], images[:2], k=3)
    page = write_html(tmp_path / "page.html", [str(p) for p in images[:2]], results).read_text()
    assert page.count('src="data:image/jpeg;base64,') == 2 * (1 + 3)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from anywhere
    assert page.count('class="row"') == 2 and "item0.png" in page
    # a rejected query shows its verdict instead of neighbours
    verdicts = ["not clothing (score 0.1 < threshold 0.5)", None]
    page = write_html(tmp_path / "v.html", [str(p) for p in images[:2]], [[], results[1]], verdicts)
    text = page.read_text()
    assert text.count('class="verdict"') == 1 and "not clothing (score 0.1" in text
    assert text.count('src="data:image/jpeg;base64,') == 1 + (1 + 3)


@pytest.mark.browser
def test_chromium_renders_the_similar_items_page(model_file: Path, tmp_path: Path) -> None:
    """What a person sees: the page rendered in headless Chromium, kept as a test artifact."""
    from conftest import chromium, keep_artifact, require_chromium

    require_chromium()
    images = _catalogue(tmp_path / "cat", 4)
    build_index(model_file, tmp_path / "cat", tmp_path / "i.npz")
    results = query(load_index(tmp_path / "i.npz"), load_classifier(model_file)[0], images, k=3)
    page = write_html(tmp_path / "similar.html", [str(p) for p in images], results)
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    assert dom.count("<img") == len(images) * (1 + 3) and "item0.png" in dom
    shot = tmp_path / "similar-items.png"
    chromium(["--virtual-time-budget=5000", f"--screenshot={shot}", page.as_uri()], tmp_path / "p")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000
    keep_artifact(shot)


def _one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("clothopt: error: "), err
    assert "Traceback" not in err + out
    assert re.search(pattern, err), err


def test_cli_build_and_query(model_file: Path, tmp_path: Path) -> None:
    images = _catalogue(tmp_path / "cat", 4)
    idx = tmp_path / "i.npz"
    code, out, err = _run(
        ["index", "build", str(model_file), str(tmp_path / "cat"), "--out", str(idx)]
    )
    assert code == 0, err
    assert "indexed 4 images" in out and str(idx) in out

    page = tmp_path / "p.html"
    argv = ["similar", str(idx), str(images[2]), str(images[3]), "-k", "2", "--json"]
    code, out, err = _run([*argv, "--html", str(page)])
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [str(images[2]), str(images[3])]
    assert [len(line["similar"]) for line in lines] == [2, 2]
    assert lines[0]["similar"][0]["path"] == str(images[2])
    assert page.read_text().count("data:image/jpeg;base64,") == 2 * 3

    code, out, err = _run(["similar", str(idx), str(images[1]), "--model", str(model_file)])
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split() == ["image", "1", "2", "3", "4"]  # k=5 capped at the catalogue
    assert rows[2].split()[1] == images[1].relative_to(tmp_path / "cat").as_posix()


def test_cli_mistakes_are_one_line_errors(model_file: Path, tmp_path: Path) -> None:
    images = _catalogue(tmp_path / "cat", 2)
    idx = tmp_path / "i.npz"
    build = ["index", "build", str(model_file)]
    (tmp_path / "empty").mkdir()
    _one_line_error(*_run([*build, str(tmp_path / "empty")]), r"no images under .*empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a")
    _one_line_error(*_run([*build, str(tmp_path / "texts")]), r"\(1 other files skipped\)")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_text("no")
    code, out, err = _run([*build, str(tmp_path / "broken")])
    assert code == 2 and "Traceback" not in err + out
    # each unreadable image is reported as it is met, then the one error
    warning, error = err.splitlines()
    assert warning.startswith("clothopt: warning: cannot read image") and "x.jpg" in warning
    assert re.fullmatch(r"clothopt: error: none of the 1 images under .* could be read", error)
    _one_line_error(*_run([*build, str(tmp_path / "nope")]), r"catalogue folder not found")
    missing_model = ["index", "build", str(tmp_path / "no.keras"), str(tmp_path / "cat")]
    _one_line_error(*_run(missing_model), r"model not found")

    assert _run([*build, str(tmp_path / "cat"), "--out", str(idx)])[0] == 0
    q = str(images[0])
    _one_line_error(*_run(["similar", str(tmp_path / "none.npz"), q]), r"index not found")
    _one_line_error(*_run(["similar", str(idx), str(tmp_path / "gone.png")]), r"image not found")
    (tmp_path / "text.jpg").write_text("not a picture")
    code, out, err = _run(["similar", str(idx), str(tmp_path / "text.jpg")])
    _one_line_error(code, out, err, r"cannot read image .*text\.jpg")
    assert "data check" not in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(*_run(["similar", str(bad), q]), r"not a readable similar-item index")
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(idx.read_bytes()[:200])
    _one_line_error(*_run(["similar", str(truncated), q]), r"not a readable similar-item index")

    other = _save_model(tmp_path / "other", 1)
    _one_line_error(*_run(["similar", str(idx), q, "--model", str(other)]), r"is stale: model")
    (tmp_path / "cat" / "extra.png").write_bytes(images[1].read_bytes())
    _one_line_error(*_run(["similar", str(idx), q]), r"is stale: catalogue")


def test_cli_ivf_index_build_and_nprobe(model_file: Path, tmp_path: Path) -> None:
    images = _catalogue(tmp_path / "cat", 6)
    cat, flat, ivf = str(tmp_path / "cat"), tmp_path / "flat.npz", tmp_path / "ivf.npz"
    build = ["index", "build", str(model_file), cat]
    code, out, err = _run([*build, "--out", str(flat)])
    assert code == 0 and "flat" in out and err == "", err  # auto: small is searched exactly
    code, out, err = _run([*build, "--out", str(flat), "--nprobe", "4"])  # IVF tuning: moot
    note = "clothopt: note: 6 images are searched exactly; --nlist and --nprobe do not apply\n"
    assert code == 0 and err == note and "flat" in out
    code, out, err = _run([*build, "--out", str(ivf), "--index", "ivf", "--nlist", "3"])
    assert code == 0 and "ivf nlist=3 nprobe=3" in out, err  # nprobe: the default, capped
    meta = load_index(ivf).meta
    assert (meta["index_type"], meta["nlist"], meta["nprobe"]) == ("IndexIVFFlat", 3, 3)
    assert load_index(ivf, nprobe=1).index.nprobe == 1

    def top(index: Path, *extra: str) -> list[list[str]]:
        code, out, err = _run(["similar", str(index), *map(str, images), "-k", "6", *extra])
        assert code == 0, err
        return [[h["path"] for h in json.loads(line)["similar"]] for line in out.splitlines()]

    args = ["--json"]
    assert top(ivf, *args, "--nprobe", "3") == top(flat, *args)  # all lists scanned: exact
    assert [len(r) for r in top(ivf, *args, "--nprobe", "1")] != [6] * 6  # one list: fewer

    _one_line_error(*_run([*build, "--index", "ivf", "--nlist", "7"]), r"--nlist 7 needs at least")
    _one_line_error(*_run([*build, "--index", "flat", "--nprobe", "2"]), r"IVF index only")
    _one_line_error(
        *_run([*build, "--index", "ivf", "--nlist", "2", "--nprobe", "3"]), r"3 is more"
    )
    q = str(images[0])
    _one_line_error(*_run(["similar", str(ivf), q, "--nprobe", "4"]), r"the index's 3 lists")
    _one_line_error(*_run(["similar", str(flat), q, "--nprobe", "1"]), r"this index is exact")
