"""Latency of the pushed model's serving signature against the bare Keras model.

    python bench/serving_latency.py --model-dir <serving base>/<model name>/<version> \\
        --source ../shared/datasets/cifar10-images.tar.gz --output latency.json

Both sides run the same trained weights in this process, on one CPU thread
pool, after a warm-up:
- signature: `serving_default` of the SavedModel, as TF Serving calls it, on
  encoded JPEG bytes (decode, resize, normalise, ResNet50, class names);
- bare model: the Keras classifier rebuilt from the SavedModel's variables,
  called through a tf.function on images already decoded and normalised, the
  cheapest way to run the same network.
Reported: one-image latency p50 and p99 in milliseconds and batch-64
throughput in images per second, for each side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keras_baseline import iter_images  # noqa: E402

from components import exporter, model  # noqa: E402

BATCH = 64


def first_test_images(source: str, count: int) -> list[bytes]:
    """Return the first `count` encoded images of the source's test split."""
    images = []
    for split, _, data in iter_images(source):
        if split == "test":
            images.append(data)
            if len(images) == count:
                break
    return images


def latency_ms(call, inputs, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls, after three warm-up calls."""
    for _ in range(3):
        call(inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(inputs)
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(single_ms: list[float], batch_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(single_ms, 50)),
        "p99_ms": float(np.percentile(single_ms, 99)),
        "batch_images_per_second": BATCH / (float(np.median(batch_ms)) / 1000),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True, help="A pushed version folder.")
    parser.add_argument("--source", required=True, help="Archive or folder with test/ images.")
    parser.add_argument("--output", required=True, help="JSON file of the results.")
    parser.add_argument("--image-size", type=int, default=32, help="The model's input side.")
    parser.add_argument("--repeats", type=int, default=200, help="One-image calls per side.")
    parser.add_argument("--batch-repeats", type=int, default=20, help="Batch calls per side.")
    args = parser.parse_args(argv)

    jpegs = first_test_images(args.source, BATCH)
    signature = tf.saved_model.load(args.model_dir).signatures[exporter.SERVING_SIGNATURE]

    def call_signature(images: tf.Tensor) -> None:
        signature(**{exporter.IMAGE_BYTES_INPUT: images})

    # The bare model: the same weights in the Keras classifier of components/model.py.
    exported = tf.saved_model.load(args.model_dir)
    num_classes = int(exported.head_variables[-1].shape[0])
    classifier, base = model.build_model(num_classes, args.image_size, dropout=0.0)
    model.load_blessed_weights(classifier, base, args.model_dir)
    bare = tf.function(lambda images: classifier(images, training=False))
    decoded = np.random.default_rng(0).standard_normal((BATCH, args.image_size, args.image_size, 3))
    decoded = tf.constant(decoded.astype("float32"))

    results = {
        "signature": summary(
            latency_ms(call_signature, tf.constant(jpegs[:1]), args.repeats),
            latency_ms(call_signature, tf.constant(jpegs), args.batch_repeats),
        ),
        "bare_model": summary(
            latency_ms(bare, decoded[:1], args.repeats),
            latency_ms(bare, decoded, args.batch_repeats),
        ),
    }
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
