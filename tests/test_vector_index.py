"""The faiss index: IVF agrees with exact search, auto chooses by size, bad choices are one line."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from clothopt.errors import UserError
from clothopt.vector_index import (
    AUTO_IVF_FROM,
    DEFAULT_NPROBE,
    TRAIN_PER_LIST,
    IndexPlan,
    index_info,
    make_index,
    plan_index,
    set_nprobe,
)


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres: clustered, as embeddings are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_at_full_nprobe_finds_what_flat_finds() -> None:
    x, q = _vectors(3000), _vectors(200, seed=1)
    flat = make_index(x, plan_index(len(x), "flat"))
    plan = plan_index(len(x), "ivf")
    assert plan == IndexPlan("ivf", 3000 // TRAIN_PER_LIST, DEFAULT_NPROBE)  # capped by size
    ivf = make_index(x, plan)
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.nprobe == DEFAULT_NPROBE
    want_s, want = flat.search(q, 5)
    set_nprobe(ivf, plan.nlist)
    got_s, got = ivf.search(q, 5)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    # at one list of many it is approximate: it misses some (else this test proves nothing)
    set_nprobe(ivf, 1)
    assert (ivf.search(q, 5)[1] != want).any()


def test_the_index_survives_serialization_with_its_nprobe() -> None:
    x = _vectors(500)
    ivf = make_index(x, plan_index(len(x), "ivf", nlist=10, nprobe=3))
    back = faiss.deserialize_index(faiss.serialize_index(ivf))
    assert index_info(back) == {"index_type": "IndexIVFFlat", "nlist": 10, "nprobe": 3}
    np.testing.assert_array_equal(back.search(x[:20], 4)[1], ivf.search(x[:20], 4)[1])
    assert index_info(make_index(x, plan_index(len(x), "flat"))) == {"index_type": "IndexFlatIP"}


def test_auto_chooses_by_size() -> None:
    assert plan_index(AUTO_IVF_FROM - 1).kind == "flat"
    big = plan_index(1_000_000)
    assert big == IndexPlan("ivf", 4000, DEFAULT_NPROBE)  # the benchmark's 4 * sqrt(n)
    assert plan_index(AUTO_IVF_FROM).kind == "ivf"
    # IVF tuning given for a catalogue that turns out small is ignored, not an error
    assert plan_index(50, "auto", nlist=4096, nprobe=4) == IndexPlan("flat")
    x = _vectors(400)
    assert isinstance(make_index(x, plan_index(400, auto_ivf_from=400)), faiss.IndexIVFFlat)
    assert isinstance(make_index(x, plan_index(400, auto_ivf_from=401)), faiss.IndexFlatIP)


def test_small_catalogues_get_few_lists() -> None:
    assert plan_index(5, "ivf") == IndexPlan("ivf", 1, 1)  # one list: exact, still works
    x = _vectors(5)
    ivf = make_index(x, plan_index(5, "ivf"))
    assert ivf.search(x, 5)[1][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert plan_index(100, "ivf", nlist=100).nlist == 100  # one point a list is enough


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((100, "ivf", 101, None), r"--nlist 101 needs at least 101 items .* has 100"),
        ((100, "ivf", 10, 11), r"--nprobe 11 is more than the index's 10 lists"),
        ((100, "ivf", None, 9), r"--nprobe 9 is more than the index's 6 lists"),
        ((100, "flat", 10, None), r"apply to an IVF index only"),
        ((100, "flat", None, 2), r"apply to an IVF index only"),
        ((100, "ivf", 0, None), r"--nlist must be at least 1, not 0"),
        ((100, "hnsw", None, None), r"unknown index kind 'hnsw'"),
    ],
)
def test_bad_choices_are_user_errors(args: tuple, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        plan_index(*args)
    assert "\n" not in str(err.value)


def test_nprobe_override_is_checked() -> None:
    x = _vectors(300)
    ivf = make_index(x, plan_index(len(x), "ivf", nlist=8))
    set_nprobe(ivf, None)
    assert ivf.nprobe == 8  # min(DEFAULT_NPROBE, nlist)
    set_nprobe(ivf, 2)
    assert ivf.nprobe == 2
    with pytest.raises(UserError, match=r"between 1 and the index's 8 lists"):
        set_nprobe(ivf, 9)
    with pytest.raises(UserError, match=r"IVF index only; this index is exact"):
        set_nprobe(make_index(x, plan_index(len(x), "flat")), 2)
