"""Transform's preprocessing_fn: raw image bytes to normalised float images.

The graph built here runs in three places: over the training split to compute
the per-channel statistics, in the Trainer's input pipeline, and inside the
exported SavedModel's serving signatures. Training and serving therefore decode,
resize and normalise images with the same ops and the same constants.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

IMAGE_KEY = "image_raw"
LABEL_KEY = "label"
# Output feature names of the transform graph.
TRANSFORMED_IMAGE_KEY = "image"
TRANSFORMED_LABEL_KEY = "label"

DEFAULT_IMAGE_SIZE = 32
# Guards the division when a channel is constant over the training split.
_STD_EPSILON = 1e-6


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a batch of encoded images to float32 [batch, size, size, 3] in [0, 1].

    JPEG, PNG, GIF (first frame) and BMP are accepted; grayscale and RGBA
    images are converted to 3 channels so every source has one shape.
    """

    def decode_one(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        image = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.clip_by_value(image, 0.0, 1.0)

    return tf.map_fn(
        decode_one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def preprocessing_fn(inputs: dict[str, tf.Tensor], custom_config: dict[str, Any]) -> dict:
    """Decode, resize and normalise images with statistics of the training split.

    custom_config["image_size"] is the side, in pixels, of the square output.
    """
    image_size = int(custom_config.get("image_size", DEFAULT_IMAGE_SIZE))
    images = decode_and_resize(inputs[IMAGE_KEY], image_size)

    # Per-channel mean and standard deviation over every pixel of the split.
    # All images have the same size after resizing, so the mean of per-image
    # means equals the pixel mean, and likewise for the second moment.
    channel_means = tf.reduce_mean(images, axis=[1, 2])
    channel_squares = tf.reduce_mean(tf.square(images), axis=[1, 2])
    mean = tft.mean(channel_means, reduce_instance_dims=False)
    second_moment = tft.mean(channel_squares, reduce_instance_dims=False)
    std = tf.sqrt(tf.maximum(second_moment - tf.square(mean), 0.0)) + _STD_EPSILON

    # Serving requests carry no label: the transform layer then drops this
    # output because its input is missing.
    return {
        TRANSFORMED_IMAGE_KEY: (images - mean) / std,
        TRANSFORMED_LABEL_KEY: tf.cast(inputs[LABEL_KEY], tf.int64),
    }
