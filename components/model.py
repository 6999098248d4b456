"""The classifier: Keras ResNet50 as base model with a new classification head.

Base weights come from one of four places (TrainingConfig.base_weights):
ImageNet through Keras' own download, a local weights file, the last blessed
model of this pipeline (warm start), or none (random initialisation).
"""

from __future__ import annotations

import logging
import os
import re

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


@keras.saving.register_keras_serializable(package="cifar10_pipeline")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization computed by TensorFlow's fused kernel.

    Keras 3 builds batch normalisation from a dozen element-wise ops (moments,
    then scale and shift), and their gradients took about a fifth of a
    ResNet50 training step on this project's 2-core CPU. TensorFlow's fused
    kernel (the one tf.keras 2 used, backed by oneDNN on x86) does the same
    maths in one op each way, which made training about 1.4x faster here (see
    docs/benchmarks.md). Weights, configuration and moving statistics are
    those of the Keras layer, so weight files load unchanged. Inputs the fused
    kernel does not take (a mask, another axis than the last of a 4-D tensor,
    a dtype other than float32) go through Keras' own computation.
    """

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased (n - 1) batch variance; Keras
            # keeps the biased one in its moving average.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), batch_variance.dtype)
            batch_variance = batch_variance * (count - 1.0) / count
            self.moving_mean.assign(
                self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum + batch_variance * (1.0 - self.momentum)
            )
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,
            self.beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            is_training=False,
        )
        return outputs

    def _fusable(self, inputs, mask) -> bool:
        rank = len(inputs.shape)
        return (
            mask is None
            and rank == 4
            and self.axis in (-1, 3, [-1], [3])
            and self.center
            and self.scale
            and inputs.dtype == tf.float32
            and self.compute_dtype == "float32"
        )


def _fuse_batch_norm(layer: keras.layers.Layer) -> keras.layers.Layer:
    """Clone function for keras.models.clone_model: batch norm becomes the fused layer."""
    if type(layer) is keras.layers.BatchNormalization:
        return FusedBatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def build_model(
    num_classes: int, image_size: int, dropout: float, fused_batch_norm: bool = True
) -> tuple[keras.Model, keras.Model]:
    """Build ResNet50 (random weights) plus a softmax head; return (model, base).

    With `fused_batch_norm` the base's BatchNormalization layers are
    FusedBatchNormalization: same weights and maths, TensorFlow's fused kernel.
    """
    base = keras.applications.ResNet50(
        include_top=False,
        weights=None,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        name=BASE_MODEL_NAME,
    )
    if fused_batch_norm:
        base = keras.models.clone_model(base, clone_function=_fuse_batch_norm)
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
    # Keras 3 weight files key each layer by its class, so a file saved from
    # keras.applications.ResNet50 loads into the same plain model, whose
    # weights then go across in order (FusedBatchNormalization keeps Keras'
    # order of gamma, beta and moving statistics).
    reference = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=base.input_shape[1:], pooling="avg"
    )
    try:
        reference.load_weights(path)
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
    base.set_weights(reference.get_weights())


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


def zero_init_residual_branches(base: keras.Model) -> int:
    """Set the scale (gamma) of the last batch norm of each residual branch to 0; return the count.

    Each residual block then starts as the identity, so a randomly initialised
    ResNet trains like a shallow network at first and converges faster
    (arXiv:1706.02677; torchvision's ResNet offers it as zero_init_residual).
    In Keras' ResNet50 these layers are conv<stage>_block<n>_3_bn.
    """
    count = 0
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and re.fullmatch(
            r"conv\d_block\d+_3_bn", layer.name
        ):
            layer.gamma.assign(tf.zeros_like(layer.gamma))
            count += 1
    return count


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
