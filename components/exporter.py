"""Export of the trained classifier as a SavedModel for TF Serving and TFMA.

The SavedModel is a tf.Module that holds only what inference needs: the
model's variables, the Transform graph and the label names. The optimizer state
is left out, which keeps the export at the size of the weights.

Signatures:
- serving_default: `image_bytes` (string [batch], encoded JPEG/PNG/GIF/BMP, what
  TF Serving's REST API decodes from {"b64": ...}) to `probabilities` (float32
  [batch, classes]), `class_id` (int64 [batch]) and `class_name` (string [batch]).
- serving_examples: `examples` (serialized tf.Example [batch] with image_raw)
  to the same outputs. TFMA's Evaluator calls this one.

Both signatures raise InvalidArgumentError, naming the batch index, for an
empty string, bytes of another format, and an image whose header claims more
than MAX_IMAGE_PIXELS pixels. The size is read from the header before the
image is decoded. An empty batch returns empty outputs. The EXIF orientation of a JPEG is
ignored, as tf.io.decode_jpeg ignores it, so clients send upright pixels.

`assets.extra/tf_serving_warmup_requests` contains Predict requests on real
images, which TF Serving replays when it loads the model (write_warmup_requests).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import keras
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from components import data_preparation, transform

logger = logging.getLogger(__name__)


class ExportVerificationError(RuntimeError):
    """A signature of the exported model is missing or returns wrong outputs."""


SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "serving_examples"
IMAGE_BYTES_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"
OUTPUT_KEYS = ("probabilities", "class_id", "class_name")

# Largest image served, in pixels (width x height), the same limit as data preparation. At the
# limit, decoding and resizing one image takes about 250 MB (estimated: 3 bytes per pixel
# decoded and 12 in float32), and tf.map_fn may decode several images of a batch at once.
MAX_IMAGE_PIXELS = data_preparation.MAX_IMAGE_PIXELS

_IMAGE_HINT = "Send the encoded bytes of a JPEG, PNG, GIF or BMP file."

# TF Serving reads warmup requests from this file of the version folder, a
# TFRecord file of PredictionLog protos. It fails the model load when there are
# more than 1000 records or when any request fails (saved_model_warmup_util.cc).
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
# Images in the batched warmup request. The other request has a single image.
WARMUP_BATCH_SIZE = 4


class ServingModule(tf.Module):
    """Inference-only wrapper of the classifier and its preprocessing."""

    def __init__(
        self,
        model: keras.Model,
        base: keras.Model,
        tft_output: tft.TFTransformOutput,
        label_names: tuple[str, ...],
    ):
        super().__init__(name="classifier")
        # A closure, not an attribute: tf.Module would track the Keras model and
        # with it the optimizer, whose slots would triple the export's size.
        self._predict = lambda images: model(images, training=False)
        # Tracked lists: the SavedModel stores these variables, and warm starts
        # (components/model.py:load_blessed_weights) read them back in order.
        self.base_variables = list(base.weights)
        self.head_variables = list(model.get_layer("probabilities").weights)
        self.other_variables = [
            variable
            for variable in model.weights
            if not any(variable is known for known in self.base_variables + self.head_variables)
        ]
        self.tft_layer = tft_output.transform_features_layer()
        self.label_names = tf.constant(list(label_names))
        raw_spec = tft_output.raw_feature_spec()
        raw_spec.pop(transform.LABEL_KEY, None)
        self._raw_feature_spec = raw_spec

    def _classify(self, raw_features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image_bytes = raw_features[transform.IMAGE_KEY]

        def classify_batch() -> dict[str, tf.Tensor]:
            checked = dict(raw_features)
            checked[transform.IMAGE_KEY] = check_encoded_images(image_bytes)
            transformed = self.tft_layer(checked)
            probabilities = self._predict(transformed[transform.TRANSFORMED_IMAGE_KEY])
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {
                "probabilities": probabilities,
                "class_id": class_id,
                "class_name": tf.gather(self.label_names, class_id),
            }

        def empty_outputs() -> dict[str, tf.Tensor]:
            # ResNet50's batch normalization fails on an empty batch with a shape error.
            return {
                "probabilities": tf.zeros([0, tf.size(self.label_names)], tf.float32),
                "class_id": tf.zeros([0], tf.int64),
                "class_name": tf.zeros([0], tf.string),
            }

        return tf.cond(tf.size(image_bytes) > 0, classify_batch, empty_outputs)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def classify_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify({transform.IMAGE_KEY: image_bytes})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def classify_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(tf.io.parse_example(examples, self._raw_feature_spec))


def check_encoded_images(image_bytes: tf.Tensor) -> tf.Tensor:
    """Return `image_bytes` [batch] once every image passes check_encoded_image."""
    indices = tf.range(tf.size(image_bytes, out_type=tf.int64), dtype=tf.int64)
    return tf.map_fn(
        lambda pair: check_encoded_image(pair[0], pair[1]),
        (image_bytes, indices),
        fn_output_signature=tf.string,
    )


def check_encoded_image(encoded: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Return `encoded` if it is a JPEG, PNG, GIF or BMP of at most MAX_IMAGE_PIXELS pixels.

    Only the header is read, so an image that claims a huge size is never decoded. Raises
    InvalidArgumentError naming the batch `index` otherwise.
    """
    # Zero padding lets the header fields be sliced from short inputs without an error.
    header = tf.io.decode_raw(
        tf.strings.substr(tf.strings.join([encoded, tf.constant(b"\0" * 26)]), 0, 26), tf.uint8
    )
    byte = tf.cast(header, tf.int64)
    magic = tf.strings.substr(encoded, 0, 4)
    is_jpeg = tf.strings.substr(magic, 0, 3) == b"\xff\xd8\xff"
    is_png = magic == b"\x89PNG"
    is_gif = magic == b"GIF8"
    is_bmp = tf.strings.substr(magic, 0, 2) == b"BM"

    def header_number(positions: list[int]) -> tf.Tensor:
        # Unsigned integer of the header bytes at `positions`, most significant byte first.
        value = tf.constant(0, tf.int64)
        for position in positions:
            value = value * 256 + byte[position]
        return value

    def png_size() -> tf.Tensor:
        # Big-endian width and height in the IHDR chunk, which PNG requires first.
        return tf.stack([header_number([16, 17, 18, 19]), header_number([20, 21, 22, 23])])

    def gif_size() -> tf.Tensor:
        # Little-endian 16-bit width and height of the logical screen.
        return tf.stack([header_number([7, 6]), header_number([9, 8])])

    def bmp_size() -> tf.Tensor:
        # BITMAPINFOHEADER: little-endian int32 width and height. A negative height means
        # rows stored top-down.
        height = header_number([25, 24, 23, 22])
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return tf.stack([header_number([21, 20, 19, 18]), height])

    def jpeg_size() -> tf.Tensor:
        shape = tf.cast(tf.io.extract_jpeg_shape(encoded), tf.int64)
        return tf.stack([shape[1], shape[0]])

    size = tf.case(
        [
            (is_jpeg, jpeg_size),
            (is_png, png_size),
            (is_gif, gif_size),
            (is_bmp, bmp_size),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )
    width, height = size[0], size[1]
    # Each side is checked first, so that the product cannot overflow int64.
    within_limit = (
        (width <= MAX_IMAGE_PIXELS)
        & (height <= MAX_IMAGE_PIXELS)
        & (width * height <= MAX_IMAGE_PIXELS)
    )
    known_format = is_jpeg | is_png | is_gif | is_bmp
    length = tf.strings.length(encoded)
    empty_message = tf.strings.format(
        "Image {} of the batch is an empty string. " + _IMAGE_HINT, [index]
    )
    format_message = tf.strings.format(
        "Image {} of the batch ({} bytes) is not a JPEG, PNG, GIF or BMP image. " + _IMAGE_HINT,
        [index, length],
    )
    size_message = tf.strings.format(
        "Image {} of the batch is {} x {} pixels, more than the limit of {} pixels, so it was "
        "not decoded. Downscale the image before sending it.",
        [index, width, height, MAX_IMAGE_PIXELS],
    )
    checks = [
        tf.debugging.Assert(length > 0, [empty_message]),
        tf.debugging.Assert((length == 0) | known_format, [format_message]),
        tf.debugging.Assert(within_limit, [size_message]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(encoded)


def export_serving_model(
    model: keras.Model,
    base: keras.Model,
    tft_output: tft.TFTransformOutput,
    label_names: tuple[str, ...],
    export_dir: str,
) -> None:
    """Write the SavedModel to export_dir: first to a temporary folder, then renamed."""
    module = ServingModule(model, base, tft_output, label_names)
    signatures = {
        SERVING_SIGNATURE: module.classify_images.get_concrete_function(),
        EXAMPLES_SIGNATURE: module.classify_examples.get_concrete_function(),
    }
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        if os.path.isdir(export_dir):
            # TFX creates the (empty) serving folder before the Trainer runs.
            os.rmdir(export_dir)
        os.replace(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Exported the serving model to %s", export_dir)


def verify_signatures(
    export_dir: str, serialized_example: bytes, num_classes: int
) -> dict[str, dict]:
    """Reload the export and call every signature once on a real example.

    Raises ExportVerificationError when a signature is missing, an output has the wrong
    shape, or the two signatures disagree. Returns the outputs per signature.
    """
    loaded = tf.saved_model.load(export_dir)
    missing = {SERVING_SIGNATURE, EXAMPLES_SIGNATURE} - set(loaded.signatures)
    if missing:
        raise ExportVerificationError(
            f"The export at {export_dir} lacks signatures {sorted(missing)}."
        )

    parsed = tf.io.parse_single_example(
        serialized_example, {transform.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    )
    outputs = {
        SERVING_SIGNATURE: loaded.signatures[SERVING_SIGNATURE](
            **{IMAGE_BYTES_INPUT: tf.reshape(parsed[transform.IMAGE_KEY], [1])}
        ),
        EXAMPLES_SIGNATURE: loaded.signatures[EXAMPLES_SIGNATURE](
            **{EXAMPLES_INPUT: tf.constant([serialized_example])}
        ),
    }
    for name, result in outputs.items():
        probabilities = result["probabilities"].numpy()
        if probabilities.shape != (1, num_classes):
            raise ExportVerificationError(
                f"Signature {name} returned probabilities of shape {probabilities.shape}, "
                f"expected (1, {num_classes})."
            )
        if abs(float(probabilities.sum()) - 1.0) > 1e-3:
            raise ExportVerificationError(
                f"Signature {name} returned probabilities that do not sum to 1."
            )
    first, second = (outputs[key]["probabilities"].numpy() for key in outputs)
    if abs(first - second).max() > 1e-5:
        raise ExportVerificationError(
            "The image-bytes and tf.Example signatures disagree on the same image."
        )
    return {
        name: {key: value.numpy().tolist() for key, value in result.items()}
        for name, result in outputs.items()
    }


def image_bytes_from_examples(serialized_examples: list[bytes]) -> list[bytes]:
    """Return the encoded image (`image_raw`) of each serialized tf.Example, in order."""
    feature_spec = {transform.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    return [
        tf.io.parse_single_example(example, feature_spec)[transform.IMAGE_KEY].numpy()
        for example in serialized_examples
    ]


def build_warmup_requests(
    image_bytes: list[bytes], model_name: str | None = None
) -> list[predict_pb2.PredictRequest]:
    """Build a Predict request on the first image and one on the first WARMUP_BATCH_SIZE.

    A single image yields only the first request.
    """
    batches = [image_bytes[:1]]
    if len(image_bytes) > 1:
        batches.append(image_bytes[:WARMUP_BATCH_SIZE])
    requests = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        if model_name:
            request.model_spec.name = model_name
        request.model_spec.signature_name = SERVING_SIGNATURE
        request.inputs[IMAGE_BYTES_INPUT].CopyFrom(
            tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)])
        )
        requests.append(request)
    return requests


def write_warmup_requests(
    export_dir: str, image_bytes: list[bytes], model_name: str | None = None
) -> str:
    """Write warmup requests on these images into the export and return the file's path.

    The file is written under a temporary name and renamed, so TF Serving never
    reads half a file. Raises ValueError when there is no image or an image
    does not decode, because one failing warmup request makes TF Serving reject
    the model version. TF Serving runs warmup requests on the SavedModel it is
    loading and ignores model_spec.name, so model_name is informational.
    """
    if not image_bytes:
        raise ValueError("Warmup requests need at least one image, got none.")
    for index, encoded in enumerate(image_bytes[:WARMUP_BATCH_SIZE]):
        try:
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(
                f"Warmup image {index} ({len(encoded)} bytes) is not a JPEG, PNG, GIF or BMP "
                f"image: {error.message}"
            ) from error
    requests = build_warmup_requests(image_bytes, model_name)

    warmup_dir = os.path.join(export_dir, WARMUP_DIR)
    os.makedirs(warmup_dir, exist_ok=True)
    path = os.path.join(warmup_dir, WARMUP_FILE)
    # A fixed staging name rather than tempfile.mkstemp, whose mode 0600 would
    # hide the file from a server that runs as another user.
    staging = os.path.join(warmup_dir, f".{WARMUP_FILE}.tmp")
    try:
        with tf.io.TFRecordWriter(staging) as writer:
            for request in requests:
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    batch_sizes = [len(request.inputs[IMAGE_BYTES_INPUT].string_val) for request in requests]
    logger.info("Wrote warmup requests of %s images to %s", batch_sizes, path)
    return path
