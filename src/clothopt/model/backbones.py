"""Backbone registry: one frozen spec per ImageNet model, in the manner of timm.

A spec knows how to build the frozen base (``include_top=False``), which preprocessing its
weights expect (named constants, as timm's ``mean``/``std``, turned into built-in Keras layers
equal to its ``preprocess_input``), and its default and minimum input sizes. How the base,
preprocessing, pooling and head are chained is :mod:`clothopt.model.compose`'s. Keras is
imported only when a model is built.
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
from typing import TYPE_CHECKING, Any, Literal

from clothopt.errors import InvalidArgument, ModelError, NotFound

if TYPE_CHECKING:
    import keras

__all__ = [
    "BACKBONES",
    "PRECISIONS",
    "BackboneSpec",
    "build_base",
    "get_backbone",
    "preprocessing_layers",
    "weights_id",
]

# keras.applications' preprocess_input modes (imagenet_utils), as spec fields; each is checked
# against the backbone's own preprocess_input by tests/test_backbones.py
_TF: Mapping[str, Any] = MappingProxyType({"scale": 1 / 127.5, "mean": (1.0, 1.0, 1.0)})  # [-1, 1]
_TORCH: Mapping[str, Any] = MappingProxyType(
    {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
)
_CAFFE: Mapping[str, Any] = MappingProxyType(
    {"channel_order": "BGR", "mean": (103.939, 116.779, 123.68)}  # BGR means, 0..255
)

# Numeric precision of the frozen base's forward pass (Keras dtype policy while it is built).
# Reduced precisions use the mixed policies: weights stay float32, convolutions run in 16 bits.
PRECISIONS: Mapping[str, str] = MappingProxyType(
    {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
)


Triple = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """One backbone: how to build its base and what input its weights expect.

    From RGB pixels 0..255 the weights expect ``(x * scale - mean) / std`` per channel, the
    channels in ``channel_order`` (``mean`` and ``std`` listed in that order too).
    """

    name: str
    module: str  # keras.applications submodule that holds constructor and preprocess_input
    constructor: str
    default_size: int
    min_size: int
    feature_dim: int  # channels of the pooled features
    paper: bool = False  # one of the four backbones of the published study
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # preprocessing (timm's mean/std, but in the units after ``scale``; defaults: identity)
    scale: float = 1.0
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"

    def __post_init__(self) -> None:
        assert self.channel_order in ("RGB", "BGR"), self.channel_order
        assert len(self.mean) == len(self.std) == 3 and all(v > 0 for v in self.std)
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
            raise InvalidArgument(
                f"image size {size} is below the minimum of {self.name} ({self.min_size} px)"
            )


def _newer_backbones() -> list[BackboneSpec]:
    """Newer Keras applications with ImageNet weights, past the paper's four.

    EfficientNetV2 and ConvNeXt rescale and normalise inside the model
    (``include_preprocessing=True``, their default, stated here): their ``preprocess_input`` is
    the identity, as for EfficientNet. ResNetV2 and MobileNetV2 expect [-1, 1] ("tf" mode),
    DenseNet the torch mean/std. Minimum input size 32 px for all (Keras's own check).
    """
    inside = MappingProxyType({"include_preprocessing": True})
    out = [
        BackboneSpec(
            name=f"efficientnetv2{variant.lower()}",
            module="efficientnet_v2",
            constructor=f"EfficientNetV2{variant}",
            default_size=size,
            min_size=32,
            feature_dim=dim,
            kwargs=inside,
        )
        for variant, size, dim in (
            ("B0", 224, 1280),
            ("B1", 240, 1280),
            ("B2", 260, 1408),
            ("B3", 300, 1536),
            ("S", 384, 1280),
            ("M", 480, 1280),
            ("L", 480, 1280),
        )
    ]
    out += [
        BackboneSpec(
            name=f"convnext_{variant.lower()}",
            module="convnext",
            constructor=f"ConvNeXt{variant}",
            default_size=224,
            min_size=32,
            feature_dim=dim,
            kwargs=inside,
        )
        for variant, dim in (
            ("Tiny", 768),
            ("Small", 768),
            ("Base", 1024),
            ("Large", 1536),
            ("XLarge", 2048),
        )
    ]
    out += [
        BackboneSpec(
            name=f"resnet{depth}v2",
            module="resnet_v2",
            constructor=f"ResNet{depth}V2",
            default_size=224,
            min_size=32,
            feature_dim=2048,
            **_TF,
        )
        for depth in (50, 101, 152)
    ]
    out += [
        BackboneSpec(
            name=f"densenet{depth}",
            module="densenet",
            constructor=f"DenseNet{depth}",
            default_size=224,
            min_size=32,
            feature_dim=dim,
            **_TORCH,
        )
        for depth, dim in ((121, 1024), (169, 1664))
    ]
    out.append(
        BackboneSpec(
            name="mobilenetv2",
            module="mobilenet_v2",
            constructor="MobileNetV2",
            default_size=224,
            min_size=32,
            feature_dim=1280,
            **_TF,
        )
    )
    return out


BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            BackboneSpec(
                name="xception",
                module="xception",
                constructor="Xception",
                default_size=299,
                min_size=71,
                feature_dim=2048,
                paper=True,
                **_TF,
            ),
            BackboneSpec(
                name="densenet201",
                module="densenet",
                constructor="DenseNet201",
                default_size=224,
                min_size=32,
                feature_dim=1920,
                paper=True,
                **_TORCH,
            ),
            # EfficientNets rescale inside the model: their preprocess_input is the identity
            BackboneSpec(
                name="efficientnetb6",
                module="efficientnet",
                constructor="EfficientNetB6",
                default_size=528,
                min_size=32,
                feature_dim=2304,
                paper=True,
            ),
            BackboneSpec(
                name="efficientnetb7",
                module="efficientnet",
                constructor="EfficientNetB7",
                default_size=600,
                min_size=32,
                feature_dim=2560,
                paper=True,
            ),
            BackboneSpec(
                name="resnet50",
                module="resnet50",
                constructor="ResNet50",
                default_size=224,
                min_size=32,
                feature_dim=2048,
                **_CAFFE,
            ),
            BackboneSpec(
                name="mobilenet_025",
                module="mobilenet",
                constructor="MobileNet",
                default_size=224,
                min_size=32,
                feature_dim=256,
                kwargs=MappingProxyType({"alpha": 0.25}),
                **_TF,
            ),
            *_newer_backbones(),
        )
    }
)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})"
        ) from None


def weights_id(weights: str, seed: int = 0) -> str:
    """What identifies the weights in cache keys: a file by its content, random ones by seed."""
    from clothopt.data import file_sha256

    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return f"random-seed{seed}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise NotFound(f"weights file not found: {weights} (use imagenet, none or a file path)")
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
        raise InvalidArgument(
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
            raise NotFound(f"weights file not found: {weights}")
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
            raise ModelError(_imagenet_hint(spec, exc)) from None
        if weights != "none":
            raise ModelError(f"cannot load weights {weights} into {spec.name}: {exc}") from None
        raise
    base.trainable = False
    return base


def preprocessing_layers(spec: BackboneSpec) -> list[keras.layers.Layer]:
    """Built-in Keras layers equal to the backbone's ``preprocess_input`` on float RGB 0..255.

    They compute ``(x * spec.scale - spec.mean) / spec.std`` in ``spec.channel_order``, each as
    few layers as it needs. Built-in layers (no Lambda, no custom class) keep exported models
    loadable in safe mode without clothopt; a test checks them against ``preprocess_input``.
    """
    import keras
    import numpy as np

    mean, std = np.array(spec.mean), np.array(spec.std)
    if spec.channel_order == "BGR":
        # RGB -> BGR, scale, mean and std as one fixed affine map on the channel axis
        affine = keras.layers.Dense(3, trainable=False, name="preprocess_bgr")
        affine.build((None, None, None, 3))
        kernel = np.eye(3)[:, ::-1] * (spec.scale / std)
        affine.set_weights([kernel.astype("float32"), (-mean / std).astype("float32")])
        return [affine]
    if np.all(std == 1.0) and np.all(mean == mean[0]):
        if spec.scale == 1.0 and mean[0] == 0.0:
            return []  # the base rescales itself (EfficientNet)
        # one multiply-add, as imagenet_utils' "tf" mode computes x / 127.5 - 1
        return [keras.layers.Rescaling(spec.scale, offset=-float(mean[0]), name="preprocess_scale")]
    layers: list[keras.layers.Layer] = []
    if spec.scale != 1.0:
        layers.append(keras.layers.Rescaling(spec.scale, name="preprocess_scale"))
    layers.append(keras.layers.Normalization(mean=mean, variance=std**2, name="preprocess_norm"))
    return layers
