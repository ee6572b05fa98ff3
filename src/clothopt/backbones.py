"""Backbone registry: one frozen spec per ImageNet model, in the manner of timm.

A spec knows how to build the frozen base (``include_top=False``), which preprocessing its
weights expect (as built-in Keras layers equal to its ``preprocess_input``), and its default
and minimum input sizes. Keras is imported only when a model is built.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from clothopt.errors import UserError

if TYPE_CHECKING:
    import keras

__all__ = [
    "BACKBONES",
    "PRECISIONS",
    "BackboneSpec",
    "build_base",
    "build_extractor",
    "get_backbone",
    "preprocessing_layers",
    "weights_id",
]

# keras.applications preprocess_input modes (imagenet_utils): what each backbone expects
_MODES = ("tf", "torch", "caffe", "none")

# Numeric precision of the frozen base's forward pass (Keras dtype policy while it is built).
# Reduced precisions use the mixed policies: weights stay float32, convolutions run in 16 bits.
PRECISIONS: Mapping[str, str] = MappingProxyType(
    {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    module: str  # keras.applications submodule that holds constructor and preprocess_input
    constructor: str
    default_size: int
    min_size: int
    preprocess_mode: str  # "tf" [-1, 1], "torch" ImageNet mean/std, "caffe" BGR - mean, "none"
    feature_dim: int  # channels of the pooled features
    paper: bool = False  # one of the four backbones of the published study
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        assert self.preprocess_mode in _MODES, self.preprocess_mode
        assert self.min_size <= self.default_size

    def constructor_fn(self) -> Callable[..., keras.Model]:
        return getattr(
            importlib.import_module(f"keras.applications.{self.module}"), self.constructor
        )

    def preprocess_input(self) -> Callable[[Any], Any]:
        """The backbone's own ``keras.applications.<module>.preprocess_input``."""
        return importlib.import_module(f"keras.applications.{self.module}").preprocess_input

    def check_size(self, size: int) -> None:
        if size < self.min_size:
            raise UserError(
                f"image size {size} is below the minimum of {self.name} ({self.min_size} px)"
            )


BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            BackboneSpec("xception", "xception", "Xception", 299, 71, "tf", 2048, paper=True),
            BackboneSpec(
                "densenet201", "densenet", "DenseNet201", 224, 32, "torch", 1920, paper=True
            ),
            BackboneSpec(
                "efficientnetb6", "efficientnet", "EfficientNetB6", 528, 32, "none", 2304, True
            ),
            BackboneSpec(
                "efficientnetb7", "efficientnet", "EfficientNetB7", 600, 32, "none", 2560, True
            ),
            BackboneSpec("resnet50", "resnet50", "ResNet50", 224, 32, "caffe", 2048),
            BackboneSpec(
                "mobilenet_025",
                "mobilenet",
                "MobileNet",
                224,
                32,
                "tf",
                256,
                kwargs=MappingProxyType({"alpha": 0.25}),
            ),
        )
    }
)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})") from None


def weights_id(weights: str, seed: int = 0) -> str:
    """What identifies the weights in cache keys: a file by its content, random ones by seed."""
    from clothopt.data import file_sha256

    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return f"random-seed{seed}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {weights} (use imagenet, none or a file path)")
    return f"file-{file_sha256(path)[:16]}"


def _imagenet_hint(spec: BackboneSpec, exc: BaseException) -> str:
    # Keras names the URL it tried; the file goes where Keras looks for it, or to --weights
    match = re.search(r"https?://\S+?\.h5", str(exc))
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if match:
        url = match.group(0)
        return (
            f"cannot download ImageNet weights for {spec.name} (offline?): fetch {url} and put it "
            f"in {cache}/, or pass --weights PATH_TO/{url.rsplit('/', 1)[-1]}"
        )
    return f"cannot load ImageNet weights for {spec.name}: {exc}"


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Build layers under the policy for ``precision``; the global policy is restored after."""
    import keras

    try:
        policy = PRECISIONS[precision]
    except KeyError:
        raise UserError(
            f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})"
        ) from None
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_base(
    spec: BackboneSpec,
    size: int,
    weights: str = "imagenet",
    seed: int = 0,
    precision: str = "float32",
) -> keras.Model:
    """The frozen base ``include_top=False`` at ``size``×``size``; it is never trained."""
    spec.check_size(size)
    with _dtype_policy(precision):
        return _build_base(spec, size, weights, seed)


def _build_base(spec: BackboneSpec, size: int, weights: str, seed: int) -> keras.Model:
    import keras

    kwargs: dict[str, Any] = dict(spec.kwargs)
    if weights == "imagenet":
        arg: str | None = "imagenet"
    elif weights == "none":
        arg = None
        keras.utils.set_random_seed(seed)  # random weights must be the same in every process
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"weights file not found: {weights}")
        arg = str(path)
    try:
        with warnings.catch_warnings():
            # MobileNet notes that sizes other than 128..224 load the 224 weights: intended here
            warnings.filterwarnings("ignore", message=".*will be loaded as the default")
            base = spec.constructor_fn()(
                include_top=False, weights=arg, input_shape=(size, size, 3), **kwargs
            )
    except Exception as exc:  # Keras raises plain Exception/ValueError for both cases
        if weights == "imagenet":
            raise UserError(_imagenet_hint(spec, exc)) from None
        if weights != "none":
            raise UserError(f"cannot load weights {weights} into {spec.name}: {exc}") from None
        raise
    base.trainable = False
    return base


def preprocessing_layers(spec: BackboneSpec) -> list[keras.layers.Layer]:
    """Built-in Keras layers equal to the backbone's ``preprocess_input`` on float RGB 0..255.

    Built-in layers (no Lambda, no custom class) keep exported models loadable in safe mode
    without clothopt; a test checks them against ``preprocess_input`` itself.
    """
    import keras
    import numpy as np

    mode = spec.preprocess_mode
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "torch":
        mean = np.array([0.485, 0.456, 0.406])
        std = np.array([0.229, 0.224, 0.225])
        return [
            keras.layers.Rescaling(1.0 / 255.0, name="preprocess_scale"),
            keras.layers.Normalization(mean=mean, variance=std**2, name="preprocess_torch"),
        ]
    if mode == "caffe":
        # RGB -> BGR and minus the ImageNet mean, as one fixed affine map on the channel axis
        flip = keras.layers.Dense(3, trainable=False, name="preprocess_caffe")
        flip.build((None, None, None, 3))
        kernel = np.eye(3, dtype="float32")[:, ::-1]
        flip.set_weights([kernel, -np.array([103.939, 116.779, 123.68], dtype="float32")])
        return [flip]
    return []


def build_extractor(
    spec: BackboneSpec,
    size: int,
    weights: str = "imagenet",
    seed: int = 0,
    precision: str = "float32",
) -> keras.Model:
    """float RGB 0..255 batch -> pooled features: preprocess, frozen base (training=False), GAP.

    The input may also be a uint8 batch: the model casts it to float32 itself, which costs less
    than a NumPy ``astype`` on the host. ``precision`` sets the base's compute dtype only;
    preprocessing and pooling stay float32, so the features are float32 whatever it is.
    """
    import keras

    base = build_base(spec, size, weights, seed, precision)
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in preprocessing_layers(spec):
        x = layer(x)
    x = base(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_features")
