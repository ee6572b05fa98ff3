"""Open-set rejection: is this picture clothing at all? (issue #13)

A 10-way softmax always names a class, even for an apple or a car. A detector scores how much a
pooled feature vector looks like the TRAIN split (higher = more like clothing); it is fitted on
train features (and, for some methods, the trained head) only, never on outside pictures, and
:func:`calibrate` sets its threshold so that a share ``accept`` (95%) of the VALIDATION images
pass. The same score is rebuilt in built-in Keras layers and ops by :func:`keras_score`, so the
exported model can carry it as a second output and still load with ``safe_mode=True``.

Methods (:data:`METHODS`):

- ``msp``: maximum softmax probability of the head (Hendrycks & Gimpel, 2017);
- ``energy``: ``logsumexp`` of the head's logits (Liu et al., 2020);
- ``mahalanobis``: minus the squared Mahalanobis distance to the nearest class mean, one
  shared covariance (Lee et al., 2018);
- ``relative_mahalanobis``: the same minus the distance to one Gaussian of all train
  features (Ren et al., 2021);
- ``knn``: cosine similarity to the k-th nearest train feature (Sun et al., 2022);
- ``vim``: energy minus the scaled norm of the feature's part outside the principal subspace
  (Wang et al., 2022).

NumPy only at import; Keras is imported inside :func:`keras_score`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clothopt._io import atomic_write_bytes
from clothopt.errors import DataError, InvalidArgument, ModelError, NotFound

if TYPE_CHECKING:
    import keras

__all__ = [
    "DEFAULT_ACCEPT",
    "DEFAULT_METHOD",
    "FORMAT_VERSION",
    "HEAD_METHODS",
    "METHODS",
    "Detector",
    "calibrate",
    "fit_detector",
    "keras_score",
    "load_detector",
    "save_detector",
]

METHODS = ("msp", "energy", "mahalanobis", "relative_mahalanobis", "knn", "vim")
HEAD_METHODS = frozenset({"msp", "energy", "vim"})  # these need the trained head's weights
DEFAULT_METHOD = "knn"  # best AUROC on the real data (benchmarks/ood_eval.py)
DEFAULT_ACCEPT = 0.95
FORMAT_VERSION = 1
_META_KEY = "__meta__"  # the JSON metadata's entry in the .npz
_CHUNK = 1024  # rows scored at once: bounds the (rows, bank) similarity matrix


def _arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float32)  # a copy: the detector must not change under its owner
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Detector:
    """A fitted detector: its method, its float32 arrays, its parameters and its threshold.

    ``arrays`` by method: ``kernel``/``bias`` (the head: msp, energy, vim), ``whitener``
    (D, D) and ``centers`` (C, D) whitened class means (mahalanobis), plus ``whitener0``/
    ``center0`` for all train features (relative_mahalanobis), ``bank`` (N, D) unit-length
    train features (knn), ``residual_kernel``/``residual_bias``/``alpha`` (vim).
    ``threshold`` is None until :func:`calibrate`.
    """

    method: str
    arrays: Mapping[str, np.ndarray]
    params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    accept: float | None = None  # the validation share the threshold was set to accept

    @property
    def feature_dim(self) -> int:
        if self.method == "knn":
            return int(self.arrays["bank"].shape[1])  # (N, D)
        return int(self.arrays["kernel" if self.method in HEAD_METHODS else "whitener"].shape[0])

    @property
    def checksum(self) -> str:
        return _arrays_sha256(self.arrays)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` pooled features -> ``(N,)`` float64 scores, higher = more like train."""
        x = _check_features(features, self.feature_dim, "features")
        if len(x) == 0:
            return np.zeros(0)
        parts = [_SCORERS[self.method](self, x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]
        return np.concatenate(parts)

    def accepts(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` booleans: True where the score reaches the calibrated threshold."""
        if self.threshold is None:
            raise InvalidArgument(
                f"the {self.method} detector has no threshold: calibrate it first"
            )
        return self.score(features) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The JSON metadata: method, parameters, threshold and the arrays' shapes and sha256."""
        return {
            "format": FORMAT_VERSION,
            "method": self.method,
            "params": dict(self.params),
            "threshold": self.threshold,
            "accept": self.accept,
            "arrays": {k: list(v.shape) for k, v in sorted(self.arrays.items())},
            "sha256": self.checksum,
        }

    @classmethod
    def from_dict(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str = "detector"
    ) -> Detector:
        """Rebuild from :meth:`to_dict` metadata and its arrays; a checksum mismatch, a missing
        array or an unknown format is a :class:`~clothopt.errors.ModelError` naming ``source``."""
        if meta.get("format") != FORMAT_VERSION:
            raise ModelError(f"{source}: unsupported detector format {meta.get('format')!r}")
        method = meta.get("method")
        if method not in METHODS:
            raise ModelError(f"{source}: unknown detector method {method!r}")
        wanted = set(meta.get("arrays", {}))
        if wanted != set(arrays):
            raise ModelError(
                f"{source}: arrays {sorted(arrays)} do not match the metadata's {sorted(wanted)}"
            )
        if _arrays_sha256(arrays) != meta.get("sha256"):
            raise ModelError(f"{source}: checksum mismatch, the detector's arrays are corrupt")
        threshold = meta.get("threshold")
        accept = meta.get("accept")
        return cls(
            method,
            {k: _frozen(v) for k, v in arrays.items()},
            dict(meta.get("params", {})),
            None if threshold is None else float(threshold),
            None if accept is None else float(accept),
        )


def _check_features(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise InvalidArgument(f"{what} must have shape {want}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what} hold NaN or infinite values")
    return x.astype(np.float64)


# ---- scores in NumPy (float64 from the stored float32 arrays) ----


def _logits(d: Detector, x: np.ndarray) -> np.ndarray:
    return x @ d.arrays["kernel"].astype(np.float64) + d.arrays["bias"]


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def _score_msp(d: Detector, x: np.ndarray) -> np.ndarray:
    z = _logits(d, x)
    return np.exp(z.max(axis=1) - _logsumexp(z))


def _score_energy(d: Detector, x: np.ndarray) -> np.ndarray:
    return _logsumexp(_logits(d, x))


def _nearest_center(x: np.ndarray, whitener: np.ndarray, centers: np.ndarray) -> np.ndarray:
    z = x @ whitener.astype(np.float64)
    return (((z[:, None, :] - centers[None]) ** 2).sum(axis=2)).min(axis=1)


def _score_mahalanobis(d: Detector, x: np.ndarray) -> np.ndarray:
    return -_nearest_center(x, d.arrays["whitener"], d.arrays["centers"])


def _score_relative(d: Detector, x: np.ndarray) -> np.ndarray:
    background = _nearest_center(x, d.arrays["whitener0"], d.arrays["center0"][None])
    return background - _nearest_center(x, d.arrays["whitener"], d.arrays["centers"])


def _score_knn(d: Detector, x: np.ndarray) -> np.ndarray:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = unit @ d.arrays["bank"].T.astype(np.float64)
    k = int(d.params["k"])
    return -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # the k-th largest similarity


def _score_vim(d: Detector, x: np.ndarray) -> np.ndarray:
    residual = x @ d.arrays["residual_kernel"].astype(np.float64) + d.arrays["residual_bias"]
    return _logsumexp(_logits(d, x)) - float(d.arrays["alpha"]) * np.linalg.norm(residual, axis=1)


_SCORERS = {
    "msp": _score_msp,
    "energy": _score_energy,
    "mahalanobis": _score_mahalanobis,
    "relative_mahalanobis": _score_relative,
    "knn": _score_knn,
    "vim": _score_vim,
}


# ---- fitting ----


def _whitener(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """``L`` with ``L @ L.T`` = inverse of ``cov`` shrunk toward a scaled identity.

    GAP features of a ReLU network have near-constant dimensions, so the plain covariance
    can be singular; the shrinkage keeps the inverse finite.
    """
    dim = cov.shape[0]
    cov = cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, np.finfo(np.float64).tiny)
    return vectors / np.sqrt(values)


def _head(head_weights: Sequence[np.ndarray] | None, dim: int, method: str) -> tuple:
    if head_weights is None or len(head_weights) != 2:
        raise InvalidArgument(f"the {method} detector needs the head's weights [kernel, bias]")
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in head_weights)
    if kernel.ndim != 2 or kernel.shape[0] != dim or bias.shape != (kernel.shape[1],):
        raise InvalidArgument(
            f"head weights of shapes {kernel.shape} and {bias.shape} do not fit {dim} features"
        )
    return kernel, bias


def _vim_dim(dim: int) -> int:
    # the principal subspace's size as ViM's authors chose it by feature width
    if dim >= 2048:
        return 1000
    if dim >= 768:
        return 512
    return dim // 2


def fit_detector(
    method: str,
    train_x: np.ndarray,
    train_y: np.ndarray | None = None,
    head_weights: Sequence[np.ndarray] | None = None,
    *,
    k: int = 10,
    shrinkage: float = 1e-6,
    vim_dim: int | None = None,
) -> Detector:
    """Fit ``method`` on TRAIN pooled features ``(N, D)`` and labels ``(N,)``.

    ``head_weights`` ([kernel (D, C), bias (C,)]) is needed by msp, energy and vim; ``k`` is
    the neighbour rank of knn; ``shrinkage`` the share of the mean variance added to the
    covariance's diagonal (mahalanobis, relative_mahalanobis); ``vim_dim`` the principal
    subspace's size (default: ViM's rule). Returns an uncalibrated :class:`Detector`.
    """
    if method not in METHODS:
        raise InvalidArgument(f"unknown OOD method {method!r} (choose from {', '.join(METHODS)})")
    x = _check_features(train_x, None, "train features")
    n, dim = x.shape
    if n < 2:
        raise InvalidArgument(f"an OOD detector needs at least 2 train features, got {n}")
    arrays: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {}
    if method in HEAD_METHODS:
        kernel, bias = _head(head_weights, dim, method)
        arrays |= {"kernel": kernel, "bias": bias}
    if method in ("mahalanobis", "relative_mahalanobis"):
        if train_y is None or np.shape(train_y) != (n,):
            raise InvalidArgument(f"the {method} detector needs one label per train feature")
        y = np.asarray(train_y)
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centered = x - means[np.searchsorted(classes, y)]
        whitener = _whitener(centered.T @ centered / n, shrinkage)
        arrays |= {"whitener": whitener, "centers": means @ whitener}
        params["shrinkage"] = shrinkage
        if method == "relative_mahalanobis":
            mean0 = x.mean(axis=0)
            whitener0 = _whitener(np.cov(x, rowvar=False, bias=True), shrinkage)
            arrays |= {"whitener0": whitener0, "center0": mean0 @ whitener0}
    elif method == "knn":
        if not 1 <= k <= n:
            raise InvalidArgument(f"knn needs 1 <= k <= {n} (the train features), got k={k}")
        arrays["bank"] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        params["k"] = int(k)
    elif method == "vim":
        principal = vim_dim if vim_dim is not None else _vim_dim(dim)
        if not 1 <= principal < dim:
            raise InvalidArgument(f"vim needs 1 <= vim_dim < {dim}, got {principal}")
        # the origin: the point whose logits are all zero (minimum-norm solution)
        origin = -np.linalg.pinv(kernel.T) @ bias
        shifted = x - origin
        _, vectors = np.linalg.eigh(shifted.T @ shifted / n)  # ascending eigenvalues
        null_space = vectors[:, : dim - principal]
        residual = np.linalg.norm(shifted @ null_space, axis=1)
        alpha = (x @ kernel + bias).max(axis=1).mean() / max(residual.mean(), 1e-12)
        arrays |= {
            "residual_kernel": null_space,
            "residual_bias": -origin @ null_space,
            "alpha": np.asarray(alpha),
        }
        params["vim_dim"] = int(principal)
    return Detector(method, {k_: _frozen(v) for k_, v in arrays.items()}, params)


def calibrate(detector: Detector, val_x: np.ndarray, accept: float = DEFAULT_ACCEPT) -> Detector:
    """A copy of ``detector`` whose threshold accepts a share ``accept`` of ``val_x``.

    The threshold is the score of rank ``floor((1 - accept) * N)`` from the bottom, so at
    least ``accept`` of the validation features score at or above it (more only on ties).
    """
    if not 0.0 < accept <= 1.0:
        raise InvalidArgument(f"accept must be in (0, 1], got {accept}")
    scores = np.sort(detector.score(val_x))
    if len(scores) == 0:
        raise InvalidArgument("cannot calibrate an OOD threshold on no validation features")
    rank = min(math.floor(round((1.0 - accept) * len(scores), 9)), len(scores) - 1)
    return dataclasses.replace(detector, threshold=float(scores[rank]), accept=float(accept))


# ---- persistence ----


def save_detector(detector: Detector, path: str | os.PathLike[str]) -> None:
    """Write ``detector`` to one ``.npz`` (its arrays plus the JSON metadata), atomically."""
    buf = io.BytesIO()
    meta = np.array(json.dumps(detector.to_dict(), sort_keys=True))
    np.savez(buf, **{_META_KEY: meta}, **detector.arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_detector(path: str | os.PathLike[str]) -> Detector:
    """Read a detector written by :func:`save_detector`; any damage is one
    :class:`~clothopt.errors.ModelError` (a missing file :class:`~clothopt.errors.NotFound`)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except FileNotFoundError:
        raise NotFound(f"OOD detector not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot read OOD detector {path}: {reason}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"cannot read OOD detector {path}: its metadata is not an object")
    return Detector.from_dict(meta, arrays, source=str(path))


# ---- the same score in built-in Keras layers ----


def _constant_dense(
    units: int, kernel: np.ndarray, bias: np.ndarray | None, name: str
) -> keras.layers.Dense:
    import keras

    layer = keras.layers.Dense(units, use_bias=bias is not None, trainable=False, name=name)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel] if bias is None else [kernel, bias])
    return layer


def _keras_logsumexp(z: keras.KerasTensor) -> keras.KerasTensor:
    from keras import ops

    return ops.logsumexp(z, axis=-1)


def _keras_nearest_center(
    x: keras.KerasTensor, whitener: np.ndarray, centers: np.ndarray, name: str
) -> keras.KerasTensor:
    from keras import ops

    classes, dim = centers.shape
    # one Dense gives every class's whitened difference: kernel [L, L, ...], bias -centers
    diffs = _constant_dense(
        classes * dim, np.tile(whitener, (1, classes)), -centers.reshape(-1), name
    )(x)
    diffs = ops.reshape(diffs, (-1, classes, dim))
    return ops.min(ops.sum(ops.square(diffs), axis=-1), axis=-1)


def keras_score(
    detector: Detector, pooled: keras.KerasTensor, name: str = "ood"
) -> keras.KerasTensor:
    """``(B, D)`` pooled features -> ``(B,)`` the detector's score, in built-in layers and ops.

    Layers are named ``{name}_...`` and the output layer ``{name}_score``; their weights are
    the detector's arrays, frozen, so a model holding them loads with ``safe_mode=True``.
    """
    import keras
    from keras import ops

    a = detector.arrays
    method = detector.method
    if method in HEAD_METHODS:
        logits = _constant_dense(a["bias"].shape[0], a["kernel"], a["bias"], f"{name}_logits")(
            pooled
        )
    if method == "msp":
        score = ops.max(keras.layers.Softmax(name=f"{name}_softmax")(logits), axis=-1)
    elif method == "energy":
        score = _keras_logsumexp(logits)
    elif method == "mahalanobis":
        score = -_keras_nearest_center(pooled, a["whitener"], a["centers"], f"{name}_whiten")
    elif method == "relative_mahalanobis":
        near = _keras_nearest_center(pooled, a["whitener"], a["centers"], f"{name}_whiten")
        background = _keras_nearest_center(
            pooled, a["whitener0"], a["center0"][None], f"{name}_whiten0"
        )
        score = background - near
    elif method == "knn":
        unit = keras.layers.UnitNormalization(name=f"{name}_unit")(pooled)
        bank = a["bank"]
        sims = _constant_dense(bank.shape[0], np.ascontiguousarray(bank.T), None, f"{name}_bank")(
            unit
        )
        k = int(detector.params["k"])
        score = ops.top_k(sims, k, sorted=True)[0][:, k - 1]
    elif method == "vim":
        residual = _constant_dense(
            a["residual_bias"].shape[0], a["residual_kernel"], a["residual_bias"], f"{name}_res"
        )(pooled)
        norm = ops.sqrt(ops.sum(ops.square(residual), axis=-1))
        score = _keras_logsumexp(logits) - float(a["alpha"]) * norm
    else:  # pragma: no cover - Detector.from_dict and fit_detector admit only METHODS
        raise InvalidArgument(f"unknown OOD method {method!r}")
    return keras.layers.Identity(name=f"{name}_score")(score)
