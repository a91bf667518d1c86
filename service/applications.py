"""Keras Applications: recognise the architectures `keras.applications` builds, and the preprocessing each expects.

Owns the table of families (ResNet, VGG, MobileNet, Inception, Xception, DenseNet, EfficientNet, ...)
with the mode of each family's `preprocess_input`, and `recognise()`, which reads a model's layer
outline (names and classes in call order, as the loader lists them) and tells which architectures the
model holds and whether it already preprocesses its own input before them. A family is recognised by
the name Keras gives the model it builds (`resnet50`, `mobilenetv2_1.00_224`, `densenet121`,
`efficientnetb0`, ...), the model itself or a nested one, else by layer names only that family has
(a backbone flattened into a fine-tuned functional model keeps them). Pure Python: it never imports
TensorFlow or Keras, and never decides what a version finally gets (`preprocessing.choose` does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

VALUE_LAYERS = frozenset({"Rescaling", "Normalization", "Lambda", "TFOpLambda", "SlicingOpLambda"})
"""Layer classes that change pixel values; before a backbone they mean the model preprocesses itself."""
RAW_PIXEL_LAYERS = frozenset({"Rescaling", "Normalization"})
"""Keras preprocessing layers, made to take raw 0..255 pixels even in a model of no known family."""


@dataclass(frozen=True, slots=True)
class LayerNode:
    """One operation of a model, as the loader lists them: call order, a nested model's layers after it."""

    path: str
    """`conv1_conv`, or `resnet50/conv1_conv` for a layer of the nested model `resnet50`."""
    class_name: str
    """`Conv2D`, `Functional`, `Rescaling`, or a Keras op's class (`GetItem`, `Add`) when not a layer."""
    is_model: bool = False
    is_layer: bool = True
    """False for a Keras 3 op called on symbolic tensors (e.g. `x[..., ::-1] - mean` in a functional model)."""
    has_weights: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Family:
    """One family of `keras.applications`, and what its `preprocess_input` computes."""

    name: str
    module: str
    """`keras.applications.<module>` holds its `preprocess_input`."""
    mode: str
    """caffe, tf, torch, or none (its `preprocess_input` passes pixels through: rescaling is inside)."""
    model_names: str
    """Regular expression of the model names Keras gives it."""
    markers: tuple[str, ...] = ()
    """Regular expressions of layer names that all appear in it, and together in no other family."""

    def named(self, name: str) -> bool:
        return re.fullmatch(self.model_names, name) is not None


FAMILIES: tuple[Family, ...] = (
    Family(
        "ResNet", "resnet", "caffe", r"resnet(50|101|152)", ("conv1_conv", "conv2_block1_0_conv", "conv2_block1_add")
    ),
    Family("ResNetV2", "resnet_v2", "tf", r"resnet(50|101|152)v2", ("conv1_conv", "conv2_block1_preact_bn", "post_bn")),
    Family("VGG", "vgg16", "caffe", r"vgg(16|19)", ("block1_conv1", "block2_conv1", "block5_conv3", "block5_pool")),
    Family("MobileNet", "mobilenet", "tf", r"mobilenet_\d\.\d\d_\d+", ("conv1", "conv_dw_1", "conv_pw_1")),
    Family(
        "MobileNetV2",
        "mobilenet_v2",
        "tf",
        r"mobilenetv2_\d\.\d\d_\d+",
        ("Conv1", "expanded_conv_depthwise", "block_1_expand"),
    ),
    Family(
        "MobileNetV3",
        "mobilenet_v3",
        "none",
        r"(?i)mobilenetv3(small|large)",
        ("expanded_conv_depthwise", "expanded_conv_1_expand", "expanded_conv_1_project"),
    ),
    Family("InceptionV3", "inception_v3", "tf", r"inception_v3", ("mixed0", "mixed5", "mixed10")),
    Family(
        "InceptionResNetV2", "inception_resnet_v2", "tf", r"inception_resnet_v2", ("mixed_5b", "mixed_7a", "conv_7b")
    ),
    Family("Xception", "xception", "tf", r"xception", ("block1_conv1", "block2_sepconv1", "block14_sepconv2")),
    Family("NASNet", "nasnet", "tf", r"nasnet_(mobile|large)", ("stem_conv1", "reduction_conv_1_stem_1")),
    Family(
        "DenseNet", "densenet", "torch", r"densenet(121|169|201)", ("conv1_conv", "conv2_block1_concat", "pool2_conv")
    ),
    Family("EfficientNet", "efficientnet", "none", r"efficientnetb[0-7]", ("stem_conv", "block1a_dwconv", "top_conv")),
    Family(
        "EfficientNetV2",
        "efficientnet_v2",
        "none",
        r"efficientnetv2-(b[0-3]|s|m|l)",
        ("stem_conv", "block1a_project_conv", "top_conv"),
    ),
    Family(
        "ConvNeXt",
        "convnext",
        "none",
        r"convnext_(tiny|small|base|large|xlarge)",
        (r"convnext_(tiny|small|base|large|xlarge)_stem",),
    ),
    Family("RegNet", "regnet", "none", r"regnet[xy]\d{3}", (r"regnet[xy]\d{3}_Stem_conv",)),
)


@dataclass(frozen=True, slots=True)
class Architecture:
    """A Keras Applications family found in a model, and how it was found."""

    family: Family
    evidence: str
    """`nested model 'resnet50'`, `the model's name 'vgg16'`, or `its layers conv1_conv, ...`."""
    path: str = ""
    """Path of the nested model that is the backbone ("" when it is the model itself or flattened)."""


@dataclass(frozen=True, slots=True)
class Recognition:
    """What `recognise` found: every architecture (outermost first), and a layer that preprocesses first."""

    architectures: tuple[Architecture, ...] = ()
    preprocessed_by: LayerNode | None = None
    """The first layer (or Keras op) that changes pixel values before the backbone, if any."""


def family_named(name: str) -> Family | None:
    """Return the family whose Keras-built model name `name` is, if any."""
    return next((f for f in FAMILIES if f.named(name)), None)


def recognise(model_name: str, nodes: Sequence[LayerNode]) -> Recognition:
    """Find the Keras Applications architectures in a model from its name and layer outline.

    Args:
        model_name: the model's own name (a bare `ResNet50(...)` is named `resnet50`).
        nodes: every operation in call order, nested models' layers after the model (see `LayerNode`).
    """
    found: list[Architecture] = []
    family = family_named(model_name)
    if family is not None:
        found.append(Architecture(family, f"the model's name '{model_name}'"))
    else:
        for node in nodes:
            if not node.is_model or any(node.path.startswith(a.path + "/") for a in found):
                continue
            family = family_named(node.name)
            if family is not None:
                found.append(Architecture(family, f"nested model '{node.path}'", node.path))
    if not found:
        names = {node.name for node in nodes}
        for family in FAMILIES:
            if family.markers and all(any(re.fullmatch(m, n) for n in names) for m in family.markers):
                shown = ", ".join(m for m in family.markers)
                found.append(Architecture(family, f"its layers {shown}"))
                break
    return Recognition(tuple(found), _preprocessed_by(nodes, {a.path for a in found if a.path}))


def _preprocessed_by(nodes: Sequence[LayerNode], backbones: set[str]) -> LayerNode | None:
    """Return the first value-changing layer or op met before the first layer that computes features.

    Walks in call order and stops at a recognised nested backbone or at the first layer with weights
    (its first convolution). Input layers, resizing, cropping and augmentation layers (identity at
    inference) change no pixel value and are passed over; nested models (e.g. a `Sequential` of
    augmentation layers) are walked into.
    """
    for node in nodes:
        if node.path in backbones:
            return None
        if node.is_model:
            continue
        if node.class_name in VALUE_LAYERS or not node.is_layer:
            return node
        if node.has_weights:
            return None
    return None
