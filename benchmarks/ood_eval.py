"""How well each OOD detector of :mod:`clothopt.final.ood` tells clothing from not-clothing.

Fits every method on the TRAIN split's pooled features (mobilenet_025, 300 px, PIL nearest;
the paper's head trained with lr 1e-2, batch 64, 5 epochs for msp/energy/vim), sets each
threshold to accept 95% of the VALIDATION split, then scores the TEST split (in) against a
folder of not-clothing photos and, separately, the sample photos shipped with scikit-image and
scikit-learn (out). Prints AUROC, the share of out-of-distribution pictures accepted at the
threshold, and the share of test images accepted.

    python -m benchmarks.ood_eval --data DIR --weights FILE --not-clothing DIR [--k 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clothopt.data import load_batch, open_dataset
from clothopt.features import FeatureCache
from clothopt.final.ood import METHODS, calibrate, fit_detector
from clothopt.model.backbones import get_backbone
from clothopt.model.compose import compose

BACKBONE, SIZE, RESIZE = "mobilenet_025", 300, "nearest"
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "horse", "camera", "coins",
    "clock", "moon", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo",
    "page", "text", "grass", "gravel", "brick",
)  # fmt: skip


def sample_photos(into: Path) -> list[Path]:
    """The scikit-image and scikit-learn sample pictures that need no download, as PNG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    arrays: dict[str, np.ndarray] = {}
    try:
        import skimage.data
    except ImportError:
        print("scikit-image not installed: only scikit-learn's sample photos", file=sys.stderr)
    else:
        for name in SKIMAGE_PHOTOS:
            try:
                image = getattr(skimage.data, name)()
            except Exception as exc:  # a picture that needs a download: skip it, say so
                print(f"skipped skimage.data.{name}: {type(exc).__name__}", file=sys.stderr)
                continue
            image = image[0] if isinstance(image, tuple) else image  # stereo pairs: left one
            arrays[f"skimage_{name}"] = (
                (image * 255).astype(np.uint8) if image.dtype == bool else image
            )
    samples = load_sample_images()
    for path, image in zip(samples.filenames, samples.images, strict=True):
        arrays[f"sklearn_{Path(path).stem}"] = image
    paths = []
    for name, image in arrays.items():
        path = into / f"{name}.png"
        Image.fromarray(image).convert("RGB").save(path)  # load_batch then resizes as training
        paths.append(path)
    return paths


def folder_features(paths: list[Path], extractor: object) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(extractor.predict_on_batch(load_batch(paths[i : i + 16], SIZE, RESIZE)))
            for i in range(0, len(paths), 16)
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="the clothing data set (train/validation/test)"
    )
    parser.add_argument("--weights", required=True, help="mobilenet_025 ImageNet weights (.h5)")
    parser.add_argument("--not-clothing", required=True, help="a folder of not-clothing .jpg")
    parser.add_argument("--cache-dir", default="studies/features", help="the feature cache")
    parser.add_argument("--k", type=int, default=10, help="neighbour rank for knn")
    parser.add_argument("--accept", type=float, default=0.95, help="validation share accepted")
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from clothopt.end_to_end import train_head

    spec = get_backbone(BACKBONE)
    data = open_dataset(args.data)
    cache = FeatureCache(args.cache_dir)
    feats = {s: cache.get(spec, args.weights, 0, SIZE, RESIZE, data[s]) for s in data.splits}
    head = train_head(
        feats["train"].x, feats["train"].y, feats["validation"].x, feats["validation"].y,
        data.classes, learning_rate=1e-2, batch_size=64, epochs=5, seed=0,
    )  # fmt: skip
    extractor = compose(spec, SIZE, args.weights, 0)
    out_paths = sorted(Path(args.not_clothing).glob("*.jpg"))
    outside = {"not-clothing": folder_features(out_paths, extractor)}
    with tempfile.TemporaryDirectory() as tmp:
        outside["sample photos"] = folder_features(sample_photos(Path(tmp)), extractor)
    test_x = feats["test"].x
    print(
        f"{BACKBONE} {SIZE}px; head val macro-F1 {head.val_metrics['f1_macro']:.3f}; "
        f"in: test {len(test_x)}; out: "
        + ", ".join(f"{name} {len(x)}" for name, x in outside.items())
    )
    names = list(outside)
    header = f"{'method':<21} {'test acc':>8}" + "".join(
        f" {n[:14] + ' AUROC':>20} {'accepted':>8}" for n in names
    )
    print(header + f" {'fit s':>6}")
    for method in METHODS:
        start = time.perf_counter()
        det = fit_detector(method, feats["train"].x, feats["train"].y, head.head_weights, k=args.k)
        det = calibrate(det, feats["validation"].x, args.accept)
        seconds = time.perf_counter() - start
        s_in = det.score(test_x)
        row = f"{method:<21} {np.mean(s_in >= det.threshold):>8.1%}"
        for name in names:
            s_out = det.score(outside[name])
            labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
            auroc = roc_auc_score(labels, np.r_[s_in, s_out])
            row += f" {auroc:>20.4f} {np.mean(s_out >= det.threshold):>8.1%}"
        print(row + f" {seconds:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
