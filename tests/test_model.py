"""The model builder and the four sources of base weights."""

from __future__ import annotations

import hashlib
import http.server
import pathlib
import socket
import threading

import keras
import numpy as np
import pytest

from components import model


@pytest.fixture(scope="module")
def classifier_and_base():
    return model.build_model(num_classes=10, image_size=32, dropout=0.2)


@pytest.fixture(scope="module")
def legacy_weights_file(tmp_path_factory) -> str:
    """ResNet50 weights without top in the legacy HDF5 layout of Keras' ImageNet file.

    tf_keras (Keras 2) writes the same format as the published file; these
    weights are random, which is all a stand-in needs.
    """
    import tf_keras

    path = tmp_path_factory.mktemp("weights") / model.IMAGENET_WEIGHTS_FILE
    tf_keras.utils.set_random_seed(7)
    tf_keras.applications.ResNet50(include_top=False, weights=None, pooling="avg").save_weights(
        str(path)
    )
    return str(path)


@pytest.fixture()
def file_server(tmp_path):
    """Serve tmp_path over HTTP on a free loopback port; yield the base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_classifier_outputs_class_probabilities(classifier_and_base):
    classifier, _ = classifier_and_base
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")

    probabilities = classifier(images, training=False).numpy()

    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_legacy_h5_weights_load_into_base(classifier_and_base, legacy_weights_file):
    import h5py

    _, base = classifier_and_base
    model.load_weights_file(base, legacy_weights_file)

    with h5py.File(legacy_weights_file, "r") as weights:
        kernel = np.asarray(weights["conv1_conv"]["conv1_conv"]["kernel:0"])
    np.testing.assert_array_equal(base.get_layer("conv1_conv").kernel.numpy(), kernel)


def test_weights_of_another_architecture_rejected(classifier_and_base, tmp_path):
    _, base = classifier_and_base
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)

    with pytest.raises(model.BaseWeightsError, match="does not fit ResNet50"):
        model.load_weights_file(base, path)


def test_missing_weights_file_rejected(classifier_and_base, tmp_path):
    _, base = classifier_and_base
    with pytest.raises(model.BaseWeightsError, match="does not exist"):
        model.load_weights_file(base, str(tmp_path / "absent.h5"))


def test_imagenet_weights_download_from_mirror(file_server, legacy_weights_file, tmp_path):
    served, url = file_server
    payload = pathlib.Path(legacy_weights_file).read_bytes()
    (served / model.IMAGENET_WEIGHTS_FILE).write_bytes(payload)
    cache = tmp_path / "cache"

    path = model.fetch_imagenet_weights(
        url=f"{url}/{model.IMAGENET_WEIGHTS_FILE}",
        md5=hashlib.md5(payload).hexdigest(),
        cache_dir=str(cache),
    )

    assert pathlib.Path(path).read_bytes() == payload
    assert str(cache) in path


def test_imagenet_weights_with_wrong_md5_rejected(file_server, legacy_weights_file, tmp_path):
    served, url = file_server
    payload = pathlib.Path(legacy_weights_file).read_bytes()
    (served / model.IMAGENET_WEIGHTS_FILE).write_bytes(payload)

    with pytest.raises(model.BaseWeightsError, match="--base-weights none"):
        model.fetch_imagenet_weights(
            url=f"{url}/{model.IMAGENET_WEIGHTS_FILE}", md5="0" * 32, cache_dir=str(tmp_path / "c")
        )


def test_unreachable_imagenet_url_names_alternatives(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(model.BaseWeightsError) as error:
        model.fetch_imagenet_weights(
            url=f"http://127.0.0.1:{port}/{model.IMAGENET_WEIGHTS_FILE}",
            cache_dir=str(tmp_path),
        )

    message = str(error.value)
    assert f"127.0.0.1:{port}" in message
    assert "--base-weights none" in message
    assert "--base-weights PATH" in message


def test_fine_tune_layers_unfreezes_only_the_top(classifier_and_base):
    _, base = classifier_and_base

    count = model.set_trainable_layers(base, fine_tune_layers=10, pretrained=False)

    assert count == 10
    assert all(layer.trainable for layer in base.layers[-10:])
    assert not any(layer.trainable for layer in base.layers[:-10])


def test_pretrained_fine_tuning_keeps_batch_norm_frozen(classifier_and_base):
    _, base = classifier_and_base

    model.set_trainable_layers(base, fine_tune_layers=0, pretrained=True)

    batch_norms = [
        layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms
    assert not any(layer.trainable for layer in batch_norms)
    assert base.get_layer("conv5_block3_3_conv").trainable


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_matches_keras_layer(training):
    """Outputs, gradients and moving statistics equal those of keras' BatchNormalization."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    inputs = tf.constant(rng.uniform(1.0, 4.0, (16, 8, 8, 32)).astype("float32"))
    upstream = tf.constant(rng.standard_normal((16, 8, 8, 32)).astype("float32"))
    reference = keras.layers.BatchNormalization(axis=3, momentum=0.9)
    fused = model.FusedBatchNormalization(axis=3, momentum=0.9)
    reference.build(inputs.shape)
    fused.build(inputs.shape)
    fused.set_weights([rng.uniform(0.5, 1.5, 32).astype("float32") for _ in range(4)])
    reference.set_weights(fused.get_weights())
    initial_moving_mean = fused.moving_mean.numpy().copy()

    results = []
    for layer in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=training)
            loss = tf.reduce_sum(outputs * upstream)
        gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        results.append((outputs, gradients, layer.get_weights()))

    (outputs, gradients, weights), (fused_outputs, fused_gradients, fused_weights) = results
    np.testing.assert_allclose(fused_outputs, outputs, rtol=1e-5, atol=1e-5)
    for gradient, fused_gradient in zip(gradients, fused_gradients, strict=True):
        np.testing.assert_allclose(fused_gradient, gradient, rtol=1e-4, atol=1e-4)
    for weight, fused_weight in zip(weights, fused_weights, strict=True):
        np.testing.assert_allclose(fused_weight, weight, rtol=1e-6, atol=1e-6)
    # Training must move the moving statistics, or their comparison proves nothing.
    assert training == (not np.allclose(fused.moving_mean.numpy(), initial_moving_mean))


def test_fused_base_loads_keras_weights(classifier_and_base, tmp_path):
    """Every batch norm of the base is fused, and plain Keras ResNet50 weights load into it."""
    _, base = classifier_and_base
    batch_norms = [layer for layer in base.layers if "BatchNormalization" in type(layer).__name__]
    assert len(batch_norms) == 53
    assert all(isinstance(layer, model.FusedBatchNormalization) for layer in batch_norms)

    plain = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = str(tmp_path / "plain.weights.h5")
    plain.save_weights(path)
    model.load_weights_file(base, path)
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        base(images, training=False), plain(images, training=False), atol=1e-4
    )
