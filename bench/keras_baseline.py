"""The plain Keras recipe the pipeline is measured against.

    python bench/keras_baseline.py --source ../shared/datasets/cifar10-images.tar.gz \\
        --epochs 5 --output-dir /tmp/baseline

What a notebook would do. It decodes every image of the archive into a
NumPy array, divides by 255 and holds out 10 % of each class of `train` for
validation. It then runs `model.fit` on a randomly initialised Keras ResNet50
with a new head (Dense 128, Dropout 0.5, softmax) under Adam at its default
rate, and `model.evaluate` on `test`. No augmentation, no schedule, Keras'
own BatchNormalization.

The source is the image layout data preparation also reads:
train/<class>/*.jpg and test/<class>/*.jpg in a .tar, .tar.gz or .zip or a
folder. The record (wall times of each stage, training images/s per epoch,
validation accuracy per epoch, test accuracy) lands in
<output-dir>/baseline.json and the trained model in <output-dir>/baseline.keras.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator

import keras
import numpy as np
from PIL import Image

logger = logging.getLogger("keras_baseline")

RECORD_FILE = "baseline.json"
MODEL_FILE = "baseline.keras"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def iter_images(source: str) -> Iterator[tuple[str, str, bytes]]:
    """Yield (split, class name, encoded bytes) for every image under train/ and test/."""
    if os.path.isdir(source):
        for split in ("train", "test"):
            for root, _, files in os.walk(os.path.join(source, split)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        with open(os.path.join(root, name), "rb") as handle:
                            yield split, os.path.basename(root), handle.read()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in sorted(archive.namelist()):
                parts = name.strip("/").split("/")
                if len(parts) >= 3 and name.lower().endswith(IMAGE_SUFFIXES):
                    yield parts[-3], parts[-2], archive.read(name)
    else:
        with tarfile.open(source) as archive:
            for member in archive:
                parts = member.name.strip("/").split("/")
                if (
                    member.isfile()
                    and len(parts) >= 3
                    and member.name.lower().endswith(IMAGE_SUFFIXES)
                ):
                    yield parts[-3], parts[-2], archive.extractfile(member).read()


def load_arrays(
    source: str, image_size: int, max_per_class: int | None
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Decode the archive into uint8 arrays per split; labels follow sorted class names."""
    images: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}
    for split, class_name, data in iter_images(source):
        if split not in images:
            continue
        per_class = images[split].setdefault(class_name, [])
        if max_per_class is not None and len(per_class) >= max_per_class:
            continue
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            per_class.append(np.asarray(image, dtype=np.uint8))
    class_names = sorted(images["train"])
    if not class_names or sorted(images["test"]) != class_names:
        raise SystemExit(
            f"{source} needs train/<class>/ and test/<class>/ image folders with the same "
            f"classes; found train: {sorted(images['train'])}, test: {sorted(images['test'])}."
        )
    arrays = {}
    for split, classes in images.items():
        x = np.stack([image for name in class_names for image in classes[name]])
        y = np.concatenate(
            [np.full(len(classes[name]), label) for label, name in enumerate(class_names)]
        )
        arrays[split] = (x, y.astype(np.int64), class_names)
    return arrays


def hold_out(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off `fraction` of each class at random; return (x_train, y_train, x_val, y_val)."""
    rng = np.random.default_rng(seed)
    validation = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        validation[members[: round(fraction * len(members))]] = True
    order = rng.permutation(np.flatnonzero(~validation))
    return x[order], y[order], x[validation], y[validation]


class TrainingTimer(keras.callbacks.Callback):
    """Training images per second of each epoch, from its start to its last batch."""

    def __init__(self, examples: int):
        super().__init__()
        self._examples = examples
        self._started = self._last = 0.0
        self.images_per_second: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = self._last = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.images_per_second.append(self._examples / max(self._last - self._started, 1e-9))


def build_model(num_classes: int, image_size: int) -> keras.Model:
    """ResNet50 from random initialisation with the common Dense 128 + Dropout 0.5 head."""
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    inputs = keras.Input((image_size, image_size, 3))
    features = keras.layers.Dense(128, activation="relu")(base(inputs))
    features = keras.layers.Dropout(0.5)(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="Archive or folder of train/ and test/.")
    parser.add_argument("--output-dir", required=True, help="Folder of the record and model.")
    parser.add_argument("--epochs", type=int, default=5, help="Training epochs (default: 5).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per step.")
    parser.add_argument("--image-size", type=int, default=32, help="Input side in pixels.")
    parser.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        help="Quick runs: at most this many images per class and split. Default: all.",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="Fraction of each class of train held out for validation (default: 0.1).",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.monotonic()

    # Data: every image decoded, then float32 arrays of the whole dataset.
    arrays = load_arrays(args.source, args.image_size, args.max_per_class)
    x_all, y_all, class_names = arrays["train"]
    x_train, y_train, x_val, y_val = hold_out(x_all, y_all, args.validation_fraction, args.seed)
    x_train, x_val = x_train / 255.0, x_val / 255.0
    x_test, y_test, _ = arrays["test"]
    x_test = x_test / 255.0
    loaded = time.monotonic()
    logger.info(
        "Loaded %d train, %d validation, %d test images in %.1f s.",
        len(y_train),
        len(y_val),
        len(y_test),
        loaded - started,
    )

    # Model and training.
    keras.utils.set_random_seed(args.seed)
    model = build_model(len(class_names), args.image_size)
    timer = TrainingTimer(len(y_train))
    history = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[timer],
        verbose=2,
    )
    fitted = time.monotonic()

    # Test accuracy, the figure the pipeline's Evaluator gates on.
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    evaluated = time.monotonic()
    logger.info("Test accuracy %.4f (evaluate %.1f s).", test_accuracy, evaluated - fitted)
    model.save(os.path.join(args.output_dir, MODEL_FILE))

    record = {
        "train_examples": int(len(y_train)),
        "validation_examples": int(len(y_val)),
        "test_examples": int(len(y_test)),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "load_seconds": loaded - started,
        "fit_seconds": fitted - loaded,
        "evaluate_seconds": evaluated - fitted,
        "wall_seconds": time.monotonic() - started,
        "training_images_per_second": timer.images_per_second,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "class_names": class_names,
    }
    with open(os.path.join(args.output_dir, RECORD_FILE), "w") as handle:
        json.dump(record, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
