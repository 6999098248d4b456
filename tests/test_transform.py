"""The preprocessing_fn, run through real tf.Transform analysis."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from conftest import analyze_transform, encode_png, jpeg_bytes
from PIL import Image

from components import transform


def transform_images(tft_output, images: list[bytes]) -> np.ndarray:
    features = {transform.IMAGE_KEY: tf.constant(images)}
    outputs = tft_output.transform_raw_features(features, drop_unused_features=True)
    return outputs[transform.TRANSFORMED_IMAGE_KEY].numpy()


def pil_bytes(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_normalised_training_images_have_zero_mean_unit_std(real_images, transform_output):
    images = [image for image, _ in real_images]
    normalised = transform_images(transform_output, images)

    assert normalised.shape == (len(images), 32, 32, 3)
    channel_mean = normalised.mean(axis=(0, 1, 2))
    channel_std = normalised.std(axis=(0, 1, 2))
    np.testing.assert_allclose(channel_mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(channel_std, 1.0, atol=1e-3)


def test_statistics_come_from_the_analysed_split(real_images, transform_output, tmp_path):
    # A graph fitted on all-black images must normalise real images differently.
    black = [encode_png(np.zeros((32, 32, 3), np.uint8))] * 4
    dark_output = analyze_transform(black, [0, 1, 2, 3], str(tmp_path))
    image = [real_images[0][0]]

    assert not np.allclose(
        transform_images(dark_output, image), transform_images(transform_output, image)
    )


def test_png_and_jpeg_of_same_pixels_decode_alike(transform_output):
    rng = np.random.default_rng(1)
    # A smooth image, so JPEG's loss stays small.
    gradient = np.linspace(0, 255, 32, dtype=np.float32)
    pixels = np.stack(
        [np.add.outer(gradient, gradient) / 2, np.tile(gradient, (32, 1)), np.full((32, 32), 90)],
        axis=-1,
    ).astype(np.uint8)
    pixels = np.clip(pixels + rng.integers(0, 3, pixels.shape), 0, 255).astype(np.uint8)

    from_png, from_jpeg = transform_images(
        transform_output, [encode_png(pixels), jpeg_bytes(pixels)]
    )

    assert np.abs(from_png - from_jpeg).mean() < 0.05


def test_other_sizes_and_grayscale_become_rgb_at_image_size(transform_output, png_image_of):
    images = [png_image_of(64, 48), png_image_of(20, 20), png_image_of(32, 32, channels=1)]

    outputs = transform_images(transform_output, images)

    assert outputs.shape == (3, 32, 32, 3)
    assert np.isfinite(outputs).all()
    # A grayscale image has equal channels before normalisation, so after it
    # the channels differ only by the per-channel constants.
    gray = outputs[2]
    assert np.corrcoef(gray[..., 0].ravel(), gray[..., 1].ravel())[0, 1] > 0.999


def test_rgba_palette_and_gray_jpeg_become_rgb(transform_output):
    rng = np.random.default_rng(2)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = palette[indices]
    alpha = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    alpha[:8] = 0  # Fully transparent rows keep their colors too.
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette(palette.reshape(-1).tolist())
    gray = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4
    gray_jpeg = pil_bytes(Image.fromarray(gray, mode="L"), "JPEG", quality=95)
    with Image.open(io.BytesIO(gray_jpeg)) as decoded_jpeg:
        gray_of_jpeg = np.asarray(decoded_jpeg)
    images = [
        pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), "PNG"),
        pil_bytes(palette_image, "PNG"),
        pil_bytes(palette_image, "PNG", transparency=bytes(rng.integers(0, 256, 256, np.uint8))),
        gray_jpeg,
    ]

    outputs = transform_images(transform_output, images)
    [rgb_reference, gray_reference] = transform_images(
        transform_output, [encode_png(rgb), encode_png(np.repeat(gray_of_jpeg[..., None], 3, -1))]
    )

    assert outputs.shape == (4, 32, 32, 3)
    assert np.isfinite(outputs).all()
    # Alpha is dropped, not blended into the colors: each output equals that of the RGB pixels.
    np.testing.assert_allclose(outputs[0], rgb_reference, atol=1e-6)
    np.testing.assert_allclose(outputs[1], rgb_reference, atol=1e-6)
    np.testing.assert_allclose(outputs[2], rgb_reference, atol=1e-6)
    # TensorFlow's and PIL's JPEG decoders may differ by a few levels of 255.
    np.testing.assert_allclose(outputs[3], gray_reference, atol=0.1)


def test_image_size_from_custom_config(real_images, tmp_path):
    images = [image for image, _ in real_images[:4]]
    output = analyze_transform(images, [0, 1, 2, 3], str(tmp_path), image_size=48)

    assert transform_images(output, images).shape == (4, 48, 48, 3)


def test_label_passes_through_unchanged(transform_output):
    features = {
        transform.IMAGE_KEY: tf.constant([encode_png(np.zeros((32, 32, 3), np.uint8))] * 2),
        transform.LABEL_KEY: tf.constant([3, 9], tf.int64),
    }
    outputs = transform_output.transform_raw_features(features)

    assert outputs[transform.TRANSFORMED_LABEL_KEY].numpy().tolist() == [3, 9]
