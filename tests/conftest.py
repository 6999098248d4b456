"""Shared fixtures: small sets of real CIFAR-10 images and a real Transform graph."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from contextlib import redirect_stdout

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as cfg

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The JPEG copy of CIFAR-10 kept beside the repository; CIFAR10_IMAGES_ARCHIVE
# points elsewhere.
CIFAR10_ARCHIVE = pathlib.Path(
    os.environ.get(
        "CIFAR10_IMAGES_ARCHIVE",
        REPO_ROOT.parent / "shared" / "datasets" / "cifar10-images.tar.gz",
    )
)
LABEL_NAMES = cfg.CIFAR10_LABEL_NAMES
# Node ids of the pipeline that create_pipeline() builds.
PIPELINE_NODE_IDS = (
    "ImportExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "AnomalyGate",
    "Transform",
    "latest_blessed_model_resolver",
    "Trainer",
    "Evaluator",
    "Pusher",
    "RunReport",
)


def extract_subset(destination: pathlib.Path, train_per_class: int, test_per_class: int) -> None:
    """Copy the first images of each class from the real archive into train/ and test/."""
    if not CIFAR10_ARCHIVE.is_file():
        pytest.fail(
            f"Real CIFAR-10 images not found at {CIFAR10_ARCHIVE}; set CIFAR10_IMAGES_ARCHIVE "
            "to the cifar10-images.tar.gz described in the README."
        )
    requested = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    needed = len(LABEL_NAMES) * (train_per_class + test_per_class)
    with tarfile.open(CIFAR10_ARCHIVE) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in requested:
                continue
            split, label, name = parts
            if counts.get((split, label), 0) >= requested[split]:
                continue
            counts[(split, label)] = counts.get((split, label), 0) + 1
            target = destination / split / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            if sum(counts.values()) == needed:
                return
    raise AssertionError(f"The archive {CIFAR10_ARCHIVE} has fewer images than requested.")


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory) -> pathlib.Path:
    """Folder of real CIFAR-10 JPEGs: 30 train and 10 test images per class."""
    folder = tmp_path_factory.mktemp("cifar_subset")
    extract_subset(folder, train_per_class=30, test_per_class=10)
    return folder


def encode_png(pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(pixels).numpy()


def serialized_example(image_bytes: bytes, label: int | None = None) -> bytes:
    feature = {"image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def analyze_transform(images: list[bytes], labels: list[int], output_dir: str, image_size=32):
    """Run the real preprocessing_fn through tf.Transform's Beam analysis; return its output."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from components import transform

    feature_spec = {
        transform.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        transform.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    instances = [
        {transform.IMAGE_KEY: image, transform.LABEL_KEY: label}
        for image, label in zip(images, labels, strict=True)
    ]
    with tft_beam.Context(temp_dir=os.path.join(output_dir, "tmp"), force_tf_compat_v1=False):
        transform_fn = (instances, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: transform.preprocessing_fn(inputs, {"image_size": image_size})
        )
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    # TFX's Transform also stores the raw schema, which the exporter reads.
    metadata_io.write_metadata(
        metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
    )
    return tft.TFTransformOutput(output_dir)


@pytest.fixture(scope="session")
def real_images(cifar_subset) -> list[tuple[bytes, int]]:
    """(JPEG bytes, label) of the subset's train images."""
    pairs = []
    for label, name in enumerate(LABEL_NAMES):
        for path in sorted((cifar_subset / "train" / name).iterdir())[:5]:
            pairs.append((path.read_bytes(), label))
    return pairs


@pytest.fixture(scope="session")
def transform_output(real_images, tmp_path_factory):
    """A Transform graph fitted on 50 real images."""
    folder = tmp_path_factory.mktemp("transform_fn")
    images, labels = zip(*real_images, strict=True)
    return analyze_transform(list(images), list(labels), str(folder))


@pytest.fixture()
def png_image_of():
    def make(height: int, width: int, channels: int = 3, seed: int = 0) -> bytes:
        rng = np.random.default_rng(seed)
        return encode_png(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))

    return make


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


QUICK_TRAINING = ["--steps-per-epoch", "3", "--eval-steps", "1", "--batch-size", "32"]


def first_run_arguments(source: pathlib.Path, output: pathlib.Path) -> list[str]:
    """Return the local_runner.py flags of `first_run`: random weights, blessed at any accuracy."""
    return [
        "--source",
        str(source),
        "--output-dir",
        str(output),
        "--base-weights",
        "none",
        "--fine-tune-epochs",
        "1",
        "--min-accuracy",
        "0",
        *QUICK_TRAINING,
    ]


@pytest.fixture(scope="session")
def first_run(cifar_subset, tmp_path_factory):
    """One cold run of local_runner.py from random initialisation on `cifar_subset`.

    Returns (output folder, printed summary). Tests that only read the run's
    outputs share it, so the suite runs the pipeline once for all of them.
    """
    import local_runner

    output = tmp_path_factory.mktemp("run")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        status = local_runner.main(first_run_arguments(cifar_subset, output))
    assert status == 0, buffer.getvalue()
    return output, buffer.getvalue()


@pytest.fixture(scope="session")
def trained(transform_output, real_images):
    """A classifier fitted for two steps, so the optimizer has state to leave out."""
    import keras

    from components import model

    keras.utils.set_random_seed(3)
    classifier, base = model.build_model(len(LABEL_NAMES), 32, dropout=0.2)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    classifier.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    return classifier, base


@pytest.fixture(scope="session")
def export_dir(trained, transform_output, tmp_path_factory) -> str:
    """The `trained` classifier exported as the Trainer does."""
    from components import exporter

    classifier, base = trained
    path = str(tmp_path_factory.mktemp("export") / "Format-Serving")
    os.makedirs(path)  # TFX creates the folder before the Trainer runs.
    exporter.export_serving_model(classifier, base, transform_output, LABEL_NAMES, path)
    return path
