"""The exported SavedModel: its signatures, contents and warm start from it."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABEL_NAMES, jpeg_bytes, serialized_example

from components import exporter, model


@pytest.fixture(scope="module")
def trained(transform_output, real_images):
    """A classifier fitted for two steps, so the optimizer has state to leave out."""
    keras.utils.set_random_seed(3)
    classifier, base = model.build_model(len(LABEL_NAMES), 32, dropout=0.2)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    classifier.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    return classifier, base


@pytest.fixture(scope="module")
def export_dir(trained, transform_output, tmp_path_factory) -> str:
    classifier, base = trained
    path = str(tmp_path_factory.mktemp("export") / "Format-Serving")
    os.makedirs(path)  # TFX creates the folder before the Trainer runs.
    exporter.export_serving_model(classifier, base, transform_output, LABEL_NAMES, path)
    return path


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

    assert "head" in description and "new head" not in description
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
