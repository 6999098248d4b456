"""The classifier: Keras ResNet50 as base model with a new classification head.

Base weights come from one of four places (TrainingConfig.base_weights):
ImageNet through Keras' own download, a local weights file, the last blessed
model of this pipeline (warm start), or none (random initialisation).
"""

from __future__ import annotations

import logging
import os

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

BASE_MODEL_NAME = "resnet50"
HEAD_NAME = "probabilities"

# The ImageNet weights of ResNet50 without its top: file name, URL and md5 as
# keras/src/applications/resnet.py of Keras 3.6 has them.
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS_FILE
)
IMAGENET_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


class BaseWeightsError(RuntimeError):
    """Base weights could not be obtained or do not fit ResNet50."""


def build_model(
    num_classes: int, image_size: int, dropout: float
) -> tuple[keras.Model, keras.Model]:
    """Build ResNet50 (random weights) plus a softmax head; return (model, base)."""
    base = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        name=BASE_MODEL_NAME,
    )
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = base(inputs)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    # float32 output keeps probabilities exact under a mixed-precision policy.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=HEAD_NAME
    )(features)
    return keras.Model(inputs, outputs, name="classifier"), base


def fetch_imagenet_weights(
    url: str | None = None,
    md5: str | None = IMAGENET_WEIGHTS_MD5,
    cache_dir: str | None = None,
) -> str:
    """Download (or find in Keras' cache) the ImageNet weights; return the file path.

    This is the call keras.applications makes for weights="imagenet", with the
    URL and cache folder open to change so a local mirror can stand in. The md5
    is checked only for Keras' own URL unless given.
    """
    if url is None:
        url = IMAGENET_WEIGHTS_URL
    elif md5 == IMAGENET_WEIGHTS_MD5 and url != IMAGENET_WEIGHTS_URL:
        md5 = None
    if cache_dir:
        # Keras silently falls back to /tmp/.keras when the folder is missing.
        os.makedirs(cache_dir, exist_ok=True)
    try:
        return keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE,
            origin=url,
            file_hash=md5,
            cache_subdir="models",
            cache_dir=cache_dir,
        )
    except Exception as error:  # Keras wraps URL, HTTP and hash errors alike.
        raise BaseWeightsError(
            f"Could not download the ImageNet weights of ResNet50 from {url}: {error}. "
            "Without internet access use --base-weights none (random initialisation), "
            "--base-weights PATH (a local ResNet50 weights .h5 file without top), or "
            "--base-weights blessed (the last blessed model of this pipeline)."
        ) from error


def load_weights_file(base: keras.Model, path: str) -> None:
    """Load a Keras weights file into the base model, with a clear error on mismatch."""
    if not os.path.isfile(path):
        raise BaseWeightsError(f"Base weights file {path!r} does not exist.")
    try:
        base.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        # Keras' message can list every layer of the file; its start is enough.
        reason = str(error)
        if len(reason) > 300:
            reason = reason[:300] + " ..."
        raise BaseWeightsError(
            f"Base weights file {path!r} does not fit ResNet50 without its top "
            f"(include_top=False): {reason}. Pass weights saved from "
            "keras.applications.ResNet50(include_top=False), e.g. with "
            "base.save_weights('resnet50.weights.h5')."
        ) from error


def check_weights_file(path: str, image_size: int) -> None:
    """Load a weights file into a throwaway ResNet50, so a wrong file fails before any run."""
    _, base = build_model(num_classes=2, image_size=image_size, dropout=0.0)
    load_weights_file(base, path)


def load_blessed_weights(model: keras.Model, base: keras.Model, serving_model_dir: str) -> str:
    """Copy the weights of an exported model (components/exporter.py) into this one.

    The base model's weights are always copied. The head's weights are copied
    too when its shapes match (same classes); otherwise the head starts anew.
    Returns a description for the log.
    """
    exported = tf.saved_model.load(serving_model_dir)
    if not hasattr(exported, "base_variables"):
        raise BaseWeightsError(
            f"The blessed model at {serving_model_dir} has no base_variables, so it was "
            "not exported by this pipeline; pass --base-weights none or a weights file."
        )
    _assign_in_order(base.weights, exported.base_variables, "base model", serving_model_dir)

    head = model.get_layer(HEAD_NAME)
    head_shapes = [tuple(variable.shape) for variable in head.weights]
    exported_shapes = [tuple(variable.shape) for variable in exported.head_variables]
    if head_shapes == exported_shapes:
        _assign_in_order(head.weights, exported.head_variables, "head", serving_model_dir)
        return f"base model and head from {serving_model_dir}"
    return f"base model from {serving_model_dir} (head shapes differ: new head)"


def _assign_in_order(targets, sources, part: str, source_dir: str) -> None:
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise BaseWeightsError(
            f"The {part} of the model at {source_dir} has {len(sources)} weights, this "
            f"model's has {len(targets)}: the architectures differ. Pass --base-weights "
            "none or imagenet to start without it."
        )
    for target, source in zip(targets, sources, strict=True):
        if tuple(target.shape) != tuple(source.shape):
            raise BaseWeightsError(
                f"Weight {target.path} of the {part} has shape {tuple(target.shape)} here "
                f"but {tuple(source.shape)} in {source_dir}; check that --image-size "
                "matches or pass --base-weights none."
            )
        target.assign(source)


def set_trainable_layers(base: keras.Model, fine_tune_layers: int, pretrained: bool) -> int:
    """Unfreeze the top `fine_tune_layers` layers of the base (all when 0); return the count.

    With pre-trained weights, BatchNormalization layers stay frozen: Keras then
    runs them in inference mode, so small fine-tuning batches do not overwrite
    the statistics learnt on the larger dataset.
    """
    base.trainable = True
    layers = base.layers
    first_trainable = 0 if fine_tune_layers == 0 else max(0, len(layers) - fine_tune_layers)
    count = 0
    for index, layer in enumerate(layers):
        trainable = index >= first_trainable
        if pretrained and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
        count += int(trainable)
    return count
