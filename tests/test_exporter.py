"""The exported SavedModel: its signatures, contents and warm start from it."""

from __future__ import annotations

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABEL_NAMES, jpeg_bytes, serialized_example
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from components import exporter, model


def test_signatures_verified_on_real_example(export_dir, real_images):
    image, label = real_images[0]

    outputs = exporter.verify_signatures(export_dir, serialized_example(image, label), 10)

    served = outputs[exporter.SERVING_SIGNATURE]
    assert served["class_name"][0].decode() in LABEL_NAMES
    assert LABEL_NAMES.index(served["class_name"][0].decode()) == served["class_id"][0]


def test_serving_default_takes_mixed_jpeg_and_png_batch(export_dir, real_images, png_image_of):
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures[exporter.SERVING_SIGNATURE]
    batch = [real_images[0][0], png_image_of(32, 32), jpeg_bytes(np.zeros((40, 40, 3), np.uint8))]

    outputs = serve(image_bytes=tf.constant(batch))

    assert outputs["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert outputs["class_id"].dtype == tf.int64
    assert outputs["class_name"].shape == (3,)


def test_exported_predictions_match_keras_model(export_dir, trained, transform_output, real_images):
    classifier, _ = trained
    images = [image for image, _ in real_images[:6]]
    transformed = transform_output.transform_raw_features({"image_raw": tf.constant(images)})
    expected = classifier(transformed["image"], training=False).numpy()

    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures[exporter.SERVING_SIGNATURE](image_bytes=tf.constant(images))

    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


def test_export_leaves_out_optimizer_state(export_dir, trained):
    classifier, _ = trained
    weight_bytes = sum(int(np.prod(weight.shape)) * 4 for weight in classifier.weights)
    variables_dir = os.path.join(export_dir, "variables")
    saved_bytes = sum(
        os.path.getsize(os.path.join(variables_dir, name)) for name in os.listdir(variables_dir)
    )

    # Adam keeps two slots per trainable weight: with them the export would be ~3x.
    assert saved_bytes < 1.2 * weight_bytes


def test_export_replaces_folder_atomically(trained, transform_output, tmp_path):
    classifier, base = trained
    target = tmp_path / "Format-Serving"
    target.mkdir()

    exporter.export_serving_model(classifier, base, transform_output, LABEL_NAMES, str(target))

    assert (target / "saved_model.pb").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["Format-Serving"]


def test_warm_start_restores_exported_weights(export_dir, trained, real_images):
    classifier, _ = trained
    fresh, fresh_base = model.build_model(len(LABEL_NAMES), 32, dropout=0.2)

    description = model.load_blessed_weights(fresh, fresh_base, export_dir)

    assert "head" in description
    assert "new head" not in description
    for restored, original in zip(fresh.weights, classifier.weights, strict=True):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())


def test_warm_start_with_other_classes_keeps_base_only(export_dir, trained):
    _, base = trained
    fresh, fresh_base = model.build_model(3, 32, dropout=0.2)

    description = model.load_blessed_weights(fresh, fresh_base, export_dir)

    assert "new head" in description
    np.testing.assert_array_equal(fresh_base.weights[0].numpy(), base.weights[0].numpy())


def test_warm_start_with_other_image_size_rejected(export_dir):
    fresh, fresh_base = model.build_model(10, 64, dropout=0.2)
    # ResNet50's weights do not depend on the input size, so they load; what
    # must fail is a model whose architecture differs.
    model.load_blessed_weights(fresh, fresh_base, export_dir)

    other = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(32, 32, 3))
    with pytest.raises(model.BaseWeightsError, match="architectures differ"):
        model.load_blessed_weights(fresh, other, export_dir)


@pytest.fixture(scope="module")
def warmup_file(export_dir, real_images) -> str:
    images = [image for image, _ in real_images[: exporter.WARMUP_BATCH_SIZE]]
    return exporter.write_warmup_requests(export_dir, images, model_name="cifar10")


def read_warmup_logs(path: str) -> list[prediction_log_pb2.PredictionLog]:
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def test_warmup_file_where_tf_serving_reads_it(warmup_file, export_dir):
    expected = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")

    assert warmup_file == expected
    assert os.path.isfile(expected)
    assert os.listdir(os.path.dirname(expected)) == ["tf_serving_warmup_requests"]


def test_warmup_file_holds_predict_logs(warmup_file, real_images):
    logs = read_warmup_logs(warmup_file)

    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    requests = [log.predict_log.request for log in logs]
    for request in requests:
        assert request.model_spec.name == "cifar10"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["image_bytes"]
        assert request.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    batches = [list(tf.make_ndarray(request.inputs["image_bytes"])) for request in requests]
    images = [image for image, _ in real_images[: exporter.WARMUP_BATCH_SIZE]]
    assert batches == [images[:1], images]


def test_warmup_requests_return_probabilities(warmup_file, export_dir):
    serve = tf.saved_model.load(export_dir).signatures[exporter.SERVING_SIGNATURE]

    for log in read_warmup_logs(warmup_file):
        inputs = {
            name: tf.constant(tf.make_ndarray(tensor))
            for name, tensor in log.predict_log.request.inputs.items()
        }
        probabilities = serve(**inputs)["probabilities"].numpy()

        assert probabilities.shape == (len(inputs["image_bytes"]), len(LABEL_NAMES))
        assert np.all(probabilities >= 0)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_warmup_single_image_gives_one_request(tmp_path, real_images):
    path = exporter.write_warmup_requests(str(tmp_path), [real_images[0][0]])

    [log] = read_warmup_logs(path)
    assert not log.predict_log.request.model_spec.name
    assert len(log.predict_log.request.inputs["image_bytes"].string_val) == 1


def test_warmup_rejects_undecodable_image(tmp_path, real_images):
    images = [real_images[0][0], b"not an image"]

    with pytest.raises(ValueError, match="Warmup image 1 .* is not a JPEG"):
        exporter.write_warmup_requests(str(tmp_path), images)

    assert not (tmp_path / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_warmup_rejects_empty_image_list(tmp_path):
    with pytest.raises(ValueError, match="at least one image"):
        exporter.write_warmup_requests(str(tmp_path), [])


# --- Edge inputs of the serving signatures -----------------------------------------------


def image_claiming_size(image_format: str, width: int, height: int) -> bytes:
    """Return a 16 x 16 image whose header is edited to claim width x height pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buffer, format=image_format)
    data = bytearray(buffer.getvalue())
    if image_format == "JPEG":
        start = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), height, width
        data[start : start + 4] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    elif image_format == "PNG":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif image_format == "GIF":
        data[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    else:
        data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def loaded_export(export_dir):
    return tf.saved_model.load(export_dir)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "BMP"])
def test_image_header_size_checked_before_decoding(image_format):
    # 5000 x 4000 pixels is above the limit. The edited files contain 16 x 16 pixels of data,
    # so a decode would fail with another message.
    oversized = image_claiming_size(image_format, 5000, 4000)
    within_limit = image_claiming_size(image_format, 16, 16)

    checked = exporter.check_encoded_images(tf.constant([within_limit]))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        exporter.check_encoded_images(tf.constant([within_limit, oversized]))

    assert checked.numpy().tolist() == [within_limit]
    limit = exporter.MAX_IMAGE_PIXELS
    assert f"Image 1 of the batch is 5000 x 4000 pixels, more than the limit of {limit}" in (
        error.value.message
    )


@pytest.mark.parametrize(
    ("bad_image", "expected_text"),
    [
        (b"", "Image 1 of the batch is an empty string"),
        (b"plain text, not an image", "Image 1 of the batch (24 bytes) is not a JPEG, PNG"),
        (image_claiming_size("JPEG", 20000, 20000), "is 20000 x 20000 pixels, more than"),
    ],
    ids=["empty", "not_an_image", "oversized"],
)
@pytest.mark.parametrize("signature", [exporter.SERVING_SIGNATURE, exporter.EXAMPLES_SIGNATURE])
def test_serving_rejects_bad_image(loaded_export, real_images, bad_image, expected_text, signature):
    batch = [real_images[0][0], bad_image]
    serve = loaded_export.signatures[signature]

    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        if signature == exporter.SERVING_SIGNATURE:
            serve(image_bytes=tf.constant(batch))
        else:
            serve(examples=tf.constant([serialized_example(image) for image in batch]))

    assert expected_text in error.value.message


@pytest.mark.parametrize("signature", [exporter.SERVING_SIGNATURE, exporter.EXAMPLES_SIGNATURE])
def test_serving_empty_batch_returns_empty_outputs(loaded_export, signature):
    serve = loaded_export.signatures[signature]
    input_name = (
        exporter.IMAGE_BYTES_INPUT
        if signature == exporter.SERVING_SIGNATURE
        else exporter.EXAMPLES_INPUT
    )

    outputs = serve(**{input_name: tf.constant([], dtype=tf.string)})

    assert outputs["probabilities"].shape == (0, len(LABEL_NAMES))
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["class_id"].shape == (0,)
    assert outputs["class_id"].dtype == tf.int64
    assert outputs["class_name"].shape == (0,)
    assert outputs["class_name"].dtype == tf.string


def test_serving_resizes_large_image(loaded_export, real_images):
    # 3000 x 3000 is 9 million pixels, below the limit of 16.8 million.
    gradient = Image.linear_gradient("L").resize((3000, 3000))
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, gradient, gradient)).save(buffer, format="JPEG", quality=80)
    serve = loaded_export.signatures[exporter.SERVING_SIGNATURE]

    outputs = serve(image_bytes=tf.constant([buffer.getvalue(), real_images[0][0]]))

    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (2, len(LABEL_NAMES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
