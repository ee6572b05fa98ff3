"""Candidates for the shipped "not clothing" detector, chosen and reported on separate photos.

    python -m benchmarks.ood_candidates --data DIR --weights FILE --not-clothing DIR \
        [--cache-dir studies/features]

Every candidate is fitted on the TRAIN split's pooled features only (mobilenet_025, PIL
nearest; 300 px, 500 px, plain and mirrored, all from the feature cache) and its threshold
accepts 95% of the VALIDATION split (:func:`clothopt.final.ood.calibrate`'s rule). The
not-clothing photos are split by the SHA-256 of their file name into a "choose" half (pick a
candidate on it) and a "report" half (quote the pick on it); the sample photos of scikit-image
and scikit-learn (the ones finalize's report uses) are a third out set. For each: AUROC against
the test split, the share accepted at the validation threshold, and the FPR at 95% test TPR
(the share accepted at the threshold that accepts 95% of the TEST split: the issue's goal).

Then whether the shipped detector's validation->test acceptance gap is noise or shift: a
permutation test (validation and test exchangeable?), the train split scored leave-one-out,
and the test acceptance the validation per-class rates predict for the test's class mix.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from clothopt.final.ood import DEFAULT_ACCEPT, fit_detector

BACKBONE, RESIZE, SIZES = "mobilenet_025", "nearest", (300, 500)
Views = Mapping[tuple[int, bool], np.ndarray]  # (size, mirrored) -> (N, D) pooled features
Scorer = Callable[[Mapping[str, Views]], dict[str, np.ndarray]]  # per set name, its scores


def halves(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the "choose" and "report" halves: the first byte of the name's SHA-256,
    even or odd. Deterministic, independent of the folder's order and of the scores."""
    even = np.array([hashlib.sha256(n.encode()).digest()[0] % 2 == 0 for n in names], bool)
    return np.flatnonzero(even), np.flatnonzero(~even)


def threshold_at(scores: np.ndarray, accept: float = DEFAULT_ACCEPT) -> float:
    """The score that accepts a share ``accept`` of ``scores``: calibrate's rank rule."""
    s = np.sort(np.asarray(scores, np.float64))
    return float(s[min(int(np.floor(round((1 - accept) * len(s), 9))), len(s) - 1)])


def out_figures(val: np.ndarray, test: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """AUROC (test vs out), share of ``out`` accepted at the validation threshold, and at
    the threshold accepting 95% of test (FPR at 95% TPR)."""
    from clothopt.metrics import auroc

    return {
        "auroc": auroc(test, out),
        "accepted": float(np.mean(out >= threshold_at(val))),
        "fpr95": float(np.mean(out >= threshold_at(test))),
    }


def permutation_p(val: np.ndarray, test: np.ndarray, rounds: int = 10000, seed: int = 0) -> float:
    """P(test acceptance <= the observed one) when validation and test are exchangeable:
    the pooled scores split at random into sets of their sizes, threshold from the first."""
    observed = np.mean(test >= threshold_at(val))
    pooled, rng, hits = np.r_[val, test], np.random.default_rng(seed), 0
    for _ in range(rounds):
        p = rng.permutation(len(pooled))
        v, t = pooled[p[: len(val)]], pooled[p[len(val) :]]
        hits += np.mean(t >= threshold_at(v)) <= observed + 1e-12
    return hits / rounds


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC, ties counting half: fast enough for thousands of resamples."""
    from scipy.stats import rankdata

    ranks = rankdata(np.r_[pos, neg])[: len(pos)]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auroc_gain_interval(
    base: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% interval of AUROC(other) - AUROC(base), each ``(test scores, out scores)``: the test
    images and the out photos resampled together, the same draws for both scores."""
    rng, n_in, n_out = np.random.default_rng(seed), len(base[0]), len(base[1])
    gains = []
    for _ in range(resamples):
        i, o = rng.integers(0, n_in, n_in), rng.integers(0, n_out, n_out)
        gains.append(_auroc(other[0][i], other[1][o]) - _auroc(base[0][i], base[1][o]))
    return float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kth(bank: np.ndarray, x: np.ndarray, k: int, mean: bool = False) -> np.ndarray:
    sims = _unit(x) @ bank.T
    top = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return top.mean(axis=1) if mean else top.min(axis=1)


# ---- representations of one set's views, and the candidates


def plain(size: int) -> Callable[[Views], np.ndarray]:
    return lambda v: v[(size, False)]


def averaged(size: int) -> Callable[[Views], np.ndarray]:
    return lambda v: (v[(size, False)] + v[(size, True)]) / 2  # the image and its mirror


def concat(*parts: Callable[[Views], np.ndarray]) -> Callable[[Views], np.ndarray]:
    return lambda v: np.concatenate([p(v) for p in parts], axis=1)


def knn(rep: Callable[[Views], np.ndarray], k: int, mirrored_bank: bool = False) -> Scorer:
    """Shipped scoring (ood's knn detector) on a representation; ``mirrored_bank`` adds the
    train images' mirrors to the bank (and doubles k: each image is there twice)."""

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        bank = rep(sets["train"])
        if mirrored_bank:
            bank = np.r_[bank, rep(_mirror(sets["train"]))]
        det = fit_detector("knn", bank, k=2 * k if mirrored_bank else k)
        return {n: det.score(rep(v)) for n, v in sets.items() if n != "train"}

    return score


def _mirror(v: Views) -> Views:
    return {(s, f): v[(s, not f)] for (s, f) in v}


def knn_mean(rep: Callable[[Views], np.ndarray], k: int) -> Scorer:
    """The mean of the k largest cosine similarities instead of the k-th."""

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        bank = _unit(rep(sets["train"]))
        return {n: _kth(bank, rep(v), k, mean=True) for n, v in sets.items() if n != "train"}

    return score


def predicted_class_knn(rep: Callable[[Views], np.ndarray], k: int, head: tuple) -> Scorer:
    """The k-th cosine neighbour among the train images of the class the head predicts."""
    kernel, bias, y_train = head

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        bank = _unit(rep(sets["train"]))
        out = {}
        for n, v in sets.items():
            if n == "train":
                continue
            x = rep(v)
            pred, s = np.argmax(x @ kernel + bias, axis=1), np.empty(len(x))
            for c in np.unique(pred):
                s[pred == c] = _kth(bank[y_train == c], x[pred == c], k)
            out[n] = s
        return out

    return score


def fitted(method: str, rep: Callable[[Views], np.ndarray], head: tuple) -> Scorer:
    """One of ood's other detectors (fitted on train features, the head where it needs one)."""
    kernel, bias, y_train = head

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        det = fit_detector(method, rep(sets["train"]), y_train, [kernel, bias])
        return {n: det.score(rep(v)) for n, v in sets.items() if n != "train"}

    return score


def rank_mix(
    rep: Callable[[Views], np.ndarray], k: int, method: str, head: tuple, w: float
) -> Scorer:
    """``w`` x the k-th-neighbour kNN score's percentile + (1 - w) x ``method``'s, percentiles
    among the TRAIN split's own scores (kNN's leave the image itself out)."""
    kernel, bias, y_train = head

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        train = rep(sets["train"])
        bank = _unit(train)
        knn_train = _kth(bank, train, k + 1)  # its own similarity (1.0) is the 1st
        other = fit_detector(method, train, y_train, [kernel, bias])
        other_train = np.sort(other.score(train))
        knn_train.sort()
        return {
            n: w * np.searchsorted(knn_train, _kth(bank, rep(v), k), "right") / len(train)
            + (1 - w) * np.searchsorted(other_train, other.score(rep(v)), "right") / len(train)
            for n, v in sets.items()
            if n != "train"
        }

    return score


def knn_standardized(rep: Callable[[Views], np.ndarray], k: int) -> Scorer:
    """kNN after standardizing each feature with the train split's mean and deviation."""

    def score(sets: Mapping[str, Views]) -> dict[str, np.ndarray]:
        train = rep(sets["train"])
        mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
        det = fit_detector("knn", (train - mean) / std, k=k)
        return {n: det.score((rep(v) - mean) / std) for n, v in sets.items() if n != "train"}

    return score


def candidates(head: tuple) -> dict[str, Scorer]:
    """The candidates, by name; ``head``: (kernel, bias, train labels) on 300 px features."""
    p3, a3, p5, a5 = plain(300), averaged(300), plain(500), averaged(500)
    return {
        "kNN k=10, 300 px (shipped)": knn(p3, 10),
        "kNN k=3, 300 px": knn(p3, 3),
        "kNN k=10, 300 px, train mirrors in the bank": knn(p3, 10, mirrored_bank=True),
        "kNN k=10, 300 px standardized": knn_standardized(p3, 10),
        "kNN k=3, 300 px image+mirror averaged": knn(a3, 3),
        "kNN k=10, 300 px image+mirror averaged": knn(a3, 10),
        "kNN k=10, 300+500 px concatenated": knn(concat(p3, p5), 10),
        "kNN k=3, 300+500 px, averaged": knn(concat(a3, a5), 3),
        "kNN mean of top 10, 300+500 px, averaged": knn_mean(concat(a3, a5), 10),
        "kNN k=5 in the predicted class, 300 px": predicted_class_knn(p3, 5, head),
        "relative Mahalanobis, 300 px": fitted("relative_mahalanobis", p3, head),
        "ViM, 300 px": fitted("vim", p3, head),
        "rank 0.75 kNN + 0.25 ViM, 300 px": rank_mix(p3, 10, "vim", head, 0.75),
        "rank 0.75 kNN + 0.25 energy, 300 px": rank_mix(p3, 10, "energy", head, 0.75),
    }


# ---- features


def photo_views(paths: Sequence[Path], weights: str) -> Views:
    """Pooled features of image files at every size, plain and mirrored (after the resize,
    as the feature cache mirrors)."""
    from clothopt.data import load_batch
    from clothopt.model.backbones import get_backbone
    from clothopt.model.compose import compose

    views: dict[tuple[int, bool], np.ndarray] = {}
    for size in SIZES:
        extractor = compose(get_backbone(BACKBONE), size, weights, 0)
        plain_x, mirrored_x = [], []
        for i in range(0, len(paths), 16):
            batch = load_batch(paths[i : i + 16], size, RESIZE)
            plain_x.append(np.asarray(extractor.predict_on_batch(batch)))
            mirrored = np.ascontiguousarray(batch[:, :, ::-1])  # NHWC: width reversed
            mirrored_x.append(np.asarray(extractor.predict_on_batch(mirrored)))
        views[(size, False)], views[(size, True)] = (
            np.concatenate(plain_x),
            np.concatenate(mirrored_x),
        )
    return views


def _rows(v: Views, idx: np.ndarray) -> Views:
    return {key: x[idx] for key, x in v.items()}


def shift_report(val: np.ndarray, test: np.ndarray, loo: np.ndarray, y_val, y_test) -> list[str]:
    """Lines on the validation->test acceptance gap of one score."""
    from scipy.stats import ks_2samp

    t = threshold_at(val)
    rates = np.array([np.mean(val[y_val == c] >= t) for c in np.unique(y_val)])
    mix = np.bincount(y_test, minlength=len(rates))[: len(rates)]
    return [
        f"threshold {t:.4f}: validation {np.mean(val >= t):.1%} accepted, test "
        f"{np.mean(test >= t):.1%}, train (leave-one-out) {np.mean(loo >= t):.1%}",
        f"permutation test (validation, test exchangeable): P(test <= observed) = "
        f"{permutation_p(val, test):.3f}",
        f"KS p-values: validation vs test {ks_2samp(val, test).pvalue:.4f}, train vs validation "
        f"{ks_2samp(loo, val).pvalue:.4f}, train vs test {ks_2samp(loo, test).pvalue:.4f}",
        f"test acceptance the validation per-class rates predict for the test's class mix: "
        f"{float(rates @ mix / mix.sum()):.1%}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the clothing data set")
    parser.add_argument("--weights", required=True, help="mobilenet_025 ImageNet weights (.h5)")
    parser.add_argument("--not-clothing", required=True, help="a folder of not-clothing .jpg")
    parser.add_argument("--cache-dir", default="studies/features", help="the feature cache")
    args = parser.parse_args(argv)

    from clothopt.data import open_dataset
    from clothopt.end_to_end import train_head
    from clothopt.features import FeatureCache
    from clothopt.final.rejection import sample_photos
    from clothopt.model.backbones import get_backbone

    data, spec = open_dataset(args.data), get_backbone(BACKBONE)
    cache = FeatureCache(args.cache_dir, progress=True)
    sets: dict[str, Views] = {}
    labels = {}
    for split in ("train", "validation", "test"):
        got = {
            (size, flip): cache.get(spec, args.weights, 0, size, RESIZE, data[split], flip=flip)
            for size in SIZES
            for flip in (False, True)
        }
        sets[split], labels[split] = {k: f.x for k, f in got.items()}, got[(300, False)].y
    photos = sorted(Path(args.not_clothing).glob("*.jpg"))
    choose, report = halves([p.name for p in photos])
    outside = photo_views(photos, args.weights)
    sets["choose"], sets["report"] = _rows(outside, choose), _rows(outside, report)
    samples = [p for _, p in sample_photos()]
    if samples:
        sets["samples"] = photo_views(samples, args.weights)
    head = train_head(
        sets["train"][(300, False)], labels["train"], sets["validation"][(300, False)],
        labels["validation"], data.classes, learning_rate=1e-2, batch_size=64, epochs=5, seed=0,
    )  # fmt: skip
    kernel, bias = (np.asarray(w, np.float64) for w in head.head_weights)
    outs = [n for n in ("choose", "report", "samples") if n in sets]
    print(
        f"{BACKBONE}; in: test {len(labels['test'])}; out: "
        + ", ".join(f"{n} {len(sets[n][(300, False)])}" for n in outs)
        + "; per out set: AUROC / accepted at the validation threshold / FPR at 95% test TPR"
    )
    print(
        f"{'candidate':<44} {'test acc':>8}"
        + "".join(f" {n:>22}" for n in outs)
        + "  report AUROC - shipped's, 95% interval"
    )
    shipped_scores: dict[str, np.ndarray] = {}
    for name, scorer in candidates((kernel, bias, labels["train"])).items():
        s = scorer(sets)
        shipped_scores = shipped_scores or s  # the first candidate is the shipped one
        row = f"{name:<44} {np.mean(s['test'] >= threshold_at(s['validation'])):>8.1%}"
        for n in outs:
            f = out_figures(s["validation"], s["test"], s[n])
            row += f"  {f['auroc']:.4f} {f['accepted']:>6.1%} {f['fpr95']:>6.1%}"
        if s is not shipped_scores:
            pair = [(x["test"], x["report"]) for x in (shipped_scores, s)]
            low, high = auroc_gain_interval(*pair)
            row += f"  [{low:+.4f}, {high:+.4f}]"
        print(row, flush=True)
    x_train = sets["train"][(300, False)]
    shipped = fit_detector("knn", x_train, k=10)
    bank = shipped.arrays["bank"].astype(np.float64)
    loo = _kth(bank, x_train, 11)  # the 10th neighbour other than the image itself
    val, test = (shipped.score(sets[n][(300, False)]) for n in ("validation", "test"))
    print("shipped kNN, validation -> test:")
    for line in shift_report(val, test, loo, labels["validation"], labels["test"]):
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
