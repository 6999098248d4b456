"""Prepare an image-classification dataset as TFRecord files for the pipeline.

The source is the official CIFAR-10 binary archive (downloaded or local), or an archive or
folder of images in `train/<class>/` and `test/<class>/` folders. The output folder
`<data_root>/<name>-<12 hex digits>/` contains:

    train/train-00000-of-00005.tfrecord ...   uncompressed TFRecord files, at most 10,000
    eval/eval-00000-of-00001.tfrecord ...     tf.train.Example records per file
    test/test-00000-of-00001.tfrecord ...
    label_names.txt                           one class name per line, line i is label i
    manifest.json                             written last; marks the folder complete

Each tf.train.Example has exactly two features: `image_raw` (bytes, the encoded image) and
`label` (int64). Images of the official binary archive are encoded as PNG. Images from a
folder keep their original bytes when they are JPEG, PNG, GIF or BMP without an EXIF
rotation. Other formats, and rotated images with the rotation applied, are converted to PNG.
Hidden files and files without an image extension in class folders are skipped. Decode
`image_raw` with `tf.io.decode_image(..., expand_animations=False)` so that GIF files yield a
single frame.

Archives are read in place, never extracted file by file: a compressed tar is decompressed
to one temporary plain tar inside `data_root`, which is deleted afterwards. Archives with
absolute member paths, `..` components, links that lead outside the archive, or device and
FIFO members are rejected.

Command line: `python -m components.data_preparation --help`.
"""

from __future__ import annotations

import abc
import argparse
import bz2
import contextlib
import dataclasses
import datetime
import functools
import gzip
import hashlib
import http.client
import io
import json
import logging
import lzma
import math
import numbers
import operator
import os
import pathlib
import posixpath
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from components import staging

logger = logging.getLogger(__name__)

OFFICIAL_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# md5 published on the dataset's home page, https://www.cs.toronto.edu/~kriz/cifar.html
OFFICIAL_CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SPLITS = ("train", "eval", "test")

# Bump when the output layout or the example encoding changes, so old outputs are not reused.
FORMAT_VERSION = 1
MAX_EXAMPLES_PER_SHARD = 10_000
# Socket timeout in seconds for connecting and for each read of the download.
DOWNLOAD_TIMEOUT_SECONDS = 60

_OFFICIAL_ARCHIVE_NAME = posixpath.basename(OFFICIAL_CIFAR10_URL)
_BINARY_LAYOUT = "cifar10-binary"
_IMAGES_LAYOUT = "images"
_LAYOUTS = (_BINARY_LAYOUT, _IMAGES_LAYOUT)

# Official binary format: each record is 1 label byte followed by 3072 pixel bytes, which are
# the 32x32 red, green and blue channels in that order, each row-major.
_BINARY_FOLDER = "cifar-10-batches-bin"
_BINARY_TRAIN_FILES = tuple(f"data_batch_{number}.bin" for number in range(1, 6))
_BINARY_TEST_FILE = "test_batch.bin"
_BINARY_META_FILE = "batches.meta.txt"
_IMAGE_SIDE = 32
_BINARY_RECORD_BYTES = 1 + 3 * _IMAGE_SIDE * _IMAGE_SIDE

# Largest image accepted, in pixels (width x height), checked from the image header before
# decoding. A larger image is rejected as a likely decompression bomb: a small file whose
# header claims a huge size. At this limit one decoded RGB image takes 50 MB in PIL, and the
# float32 copy that Transform makes while resizing takes 200 MB (estimates: 3 and 12 bytes
# per pixel). The exported model applies the same limit to served images
# (components/exporter.py).
MAX_IMAGE_PIXELS = 4096 * 4096

# Formats whose bytes are written unchanged; tf.io.decode_image reads all four.
_KEPT_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP"})
# Image modes that PIL writes to PNG without conversion.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
# PIL's 16-bit modes other than I;16, which are converted to I;16 before PNG encoding.
_16_BIT_MODES = frozenset({"I;16B", "I;16L", "I;16N"})
# Top-level entries that archive tools add and that are not part of a dataset.
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX"})

_READ_CHUNK_BYTES = 1 << 20
_MEGABYTE = 1_000_000

_SOURCE_HINT = (
    "pass --source PATH (the `source` argument of prepare_dataset) with a local copy of the "
    f"archive ({_OFFICIAL_ARCHIVE_NAME}) or a folder of images in train/<class>/ and "
    "test/<class>/ folders"
)


class DataPreparationError(ValueError):
    """Invalid input or a failed step; the message names the value and how to fix it."""


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A complete output folder of prepare_dataset."""

    root: pathlib.Path
    label_names: tuple[str, ...]
    split_counts: dict[str, int]
    reused: bool


@dataclasses.dataclass(frozen=True)
class _Options:
    eval_fraction: float
    seed: int
    max_examples_per_split: int | None


@dataclasses.dataclass(frozen=True)
class _SourceSplit:
    """Examples of one source split: labels, and a function returning the image bytes of one."""

    labels: np.ndarray
    encode: Callable[[int], bytes]


@dataclasses.dataclass(frozen=True)
class _SourceData:
    layout: str
    label_names: tuple[str, ...]
    train: _SourceSplit
    test: _SourceSplit


@dataclasses.dataclass(frozen=True)
class _ImageListing:
    """Image files of an image-folder layout, sorted by class and file name."""

    label_names: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]  # "train"/"test" -> (path, label) pairs


class _ProgressLog:
    """Progress of a loop, logged as `done of total` at most every few seconds and at the end."""

    def __init__(self, description: str, total: int, interval_seconds: float = 5.0) -> None:
        self._description = description
        self._total = total
        self._interval = interval_seconds
        self._last_log = time.monotonic()
        self._done = 0

    def advance(self) -> None:
        self._done += 1
        now = time.monotonic()
        if self._done == self._total or now - self._last_log >= self._interval:
            self._last_log = now
            percent = 100 * self._done // max(self._total, 1)
            logger.info("%s: %d of %d (%d%%)", self._description, self._done, self._total, percent)


# --- Public API --------------------------------------------------------------------------


def prepare_dataset(
    source: str,
    data_root: str | os.PathLike,
    *,
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_examples_per_split: int | None = None,
    expected_md5: str | None = None,
) -> PreparedData:
    """Write the train, eval and test TFRecord splits of `source` below `data_root`.

    `source` is an http(s) URL of an archive, a local archive (.tar, .tar.gz, .tgz, .zip) or
    a folder. The archive or folder contains either the official CIFAR-10 binary layout or
    images in `train/<class>/` and `test/<class>/` folders. The eval split is
    `eval_fraction` of each class of the train split. The test split is the source's test
    split. `max_examples_per_split` caps train (before eval is carved out) and test,
    balanced across classes. `seed` drives all random choices, so the same inputs give the
    same files.

    When a complete output for the same source identity and options exists, it is returned
    with `reused=True` and left unchanged.

    Raises:
        DataPreparationError: for invalid options, an unreadable or unsafe source, a failed
            download or an md5 mismatch.
    """
    source = os.fspath(source)
    options = _Options(
        eval_fraction=_validate_eval_fraction(eval_fraction),
        seed=_validate_seed(seed),
        max_examples_per_split=_validate_max_examples(max_examples_per_split),
    )
    expected_md5 = _normalize_md5(expected_md5)
    root = pathlib.Path(data_root).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataPreparationError(
            f"Cannot create the data root {str(root)!r}: {error}. Pass a writable --data-root."
        ) from error
    _remove_stale_temporaries(root)

    if source.lower().startswith(("http://", "https://")):
        return _prepare_from_url(source, root, options, expected_md5)
    if "://" in source:
        raise DataPreparationError(
            f"Unsupported URL scheme in source {source!r}. Only http:// and https:// URLs "
            f"can be downloaded. Otherwise {_SOURCE_HINT}."
        )
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        if expected_md5 is not None:
            raise DataPreparationError(
                f"An expected md5 ({expected_md5}) was given, but source {source!r} is a "
                "folder, and the md5 check applies only to an archive file or URL. Drop --md5."
            )
        return _prepare_from_folder(path, root, options)
    if path.is_file():
        return _prepare_from_archive(path, root, options, expected_md5)
    raise DataPreparationError(
        f"Source {source!r} was not found. Pass an http(s) URL, an archive file (.tar, "
        ".tar.gz, .tgz, .zip) or a folder with train/<class>/ and test/<class>/ images."
    )


def read_label_names(root: str | os.PathLike) -> tuple[str, ...]:
    """Read label_names.txt of a prepared dataset folder. Element i is the name of label i."""
    path = pathlib.Path(root) / "label_names.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataPreparationError(
            f"{path} was not found. Pass the folder that prepare_dataset returned "
            "(PreparedData.root), which contains label_names.txt."
        ) from error
    names = tuple(text.splitlines())
    if not names:
        raise DataPreparationError(f"{path} is empty. Prepare the dataset again.")
    for line_number, name in enumerate(names, start=1):
        if not name:
            raise DataPreparationError(
                f"{path} line {line_number} is empty, so the labels after it would shift; "
                "prepare the dataset again."
            )
    return names


def verify_prepared_dataset(folder: str | os.PathLike) -> dict[str, int]:
    """Read every record of the train, eval and test splits in `folder` and return their counts.

    `folder` is a prepared dataset as the pipeline reads it (`<split>/*` files), on a local
    disk or any file system that tf.io.gfile reads, such as gs:// (NOTE: tested on local
    folders only). Each split must have files and examples, every record must be complete
    (its CRC matches), and every example needs one bytes `image_raw` and one int64 `label`,
    below the number of lines of label_names.txt when that file exists. When manifest.json
    exists, file sizes and example counts must match it.

    Raises:
        DataPreparationError: naming the file, and the record for a bad example, with the fix.
    """
    import tensorflow as tf  # Imported here so that --help and input errors stay fast.

    root = os.fspath(folder).rstrip("/")
    manifest = _read_optional_json(tf, f"{root}/manifest.json")
    num_classes = None
    if tf.io.gfile.exists(f"{root}/label_names.txt"):
        with tf.io.gfile.GFile(f"{root}/label_names.txt") as file:
            num_classes = len(file.read().splitlines())
    recorded_sizes = manifest.get("shard_bytes", {}) if manifest else {}
    counts = {}
    for split in SPLITS:
        files = sorted(tf.io.gfile.glob(f"{root}/{split}/*"))
        if not files:
            raise DataPreparationError(
                f"{root}/{split}/ contains no files, so the {split} split is missing. Copy the "
                "complete prepared folder, or prepare the dataset again."
            )
        count = 0
        for path in files:
            expected_size = recorded_sizes.get(path[len(root) + 1 :])
            size = tf.io.gfile.stat(path).length
            if expected_size is not None and size != expected_size:
                raise DataPreparationError(
                    f"{path} has {size} bytes, but manifest.json records {expected_size}, so "
                    "it is truncated or was changed. Copy the prepared folder again, or "
                    "prepare the dataset again."
                )
            count += _verify_tfrecord_file(tf, path, num_classes)
        if count == 0:
            raise DataPreparationError(
                f"The {split} split in {root}/{split}/ has no examples, because its files "
                "contain no records. Prepare the dataset again with images for every split."
            )
        if manifest and int(manifest["split_counts"][split]) != count:
            raise DataPreparationError(
                f"The {split} split in {root}/{split}/ has {count} examples, but "
                f"manifest.json records {manifest['split_counts'][split]}. Copy the prepared "
                "folder again, or prepare the dataset again."
            )
        counts[split] = count
    return counts


def _read_optional_json(tf, path: str) -> dict | None:
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as file:
            return json.loads(file.read())
    except ValueError as error:
        raise DataPreparationError(
            f"{path} is not valid JSON ({error}). Copy the prepared folder again."
        ) from error


def _verify_tfrecord_file(tf, path: str, num_classes: int | None) -> int:
    """Return the number of records of one TFRecord file after checking each example."""
    # ImportExampleGen and the Trainer read files ending in .gz as GZIP.
    compression = "GZIP" if path.endswith(".gz") else ""
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path, compression)):
            _verify_example(record.numpy(), f"{path} record {index}", num_classes)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise DataPreparationError(
            f"{path} is truncated or corrupt: record {index + 1} (counted from 0) cannot be "
            f"read ({type(error).__name__}). Copy the file again, or prepare the dataset again."
        ) from error
    return index + 1


def _verify_example(serialized: bytes, origin: str, num_classes: int | None) -> None:
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        features = example_pb2.Example.FromString(serialized).features.feature
    except DecodeError as error:
        raise DataPreparationError(
            f"{origin} is not a tf.train.Example ({error}). Prepare the dataset again."
        ) from error
    if "image_raw" not in features or features["image_raw"].WhichOneof("kind") != "bytes_list":
        raise DataPreparationError(
            f"{origin} has no bytes feature image_raw. Examples need image_raw (bytes) and label "
            "(int64); prepare the dataset with python -m components.data_preparation."
        )
    image_values = features["image_raw"].bytes_list.value
    if len(image_values) != 1:
        raise DataPreparationError(
            f"{origin} has {len(image_values)} image_raw values instead of 1. Prepare the "
            "dataset again."
        )
    kind = features["label"].WhichOneof("kind") if "label" in features else None
    if kind != "int64_list":
        raise DataPreparationError(
            f"{origin} has a label of type {kind or 'none'}, but the pipeline needs an int64 "
            "label (int64_list). Write the label as tf.train.Int64List, or prepare the dataset "
            "with python -m components.data_preparation."
        )
    labels = features["label"].int64_list.value
    if len(labels) != 1:
        raise DataPreparationError(
            f"{origin} has {len(labels)} label values instead of 1. Prepare the dataset again."
        )
    if num_classes is not None and not 0 <= labels[0] < num_classes:
        raise DataPreparationError(
            f"{origin} has label {labels[0]}, but label_names.txt lists {num_classes} classes, "
            f"so labels must be 0 to {num_classes - 1}. Prepare the dataset again."
        )


def main(argv: list[str] | None = None) -> int:
    """Run the command-line interface and return the exit code: 0 on success, 2 on bad input.

    Invalid arguments make argparse exit with status 2 itself.
    """
    parser = _build_argument_parser()
    args = parser.parse_args(argv)
    if args.verify is None and args.data_root is None:
        parser.error("the following arguments are required: --data-root (or --verify FOLDER)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.verify is not None:
        try:
            counts = verify_prepared_dataset(args.verify)
        except DataPreparationError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        text = ", ".join(f"{split}={count}" for split, count in counts.items())
        print(f"Verified {args.verify}: {text}")
        return 0
    try:
        prepared = prepare_dataset(
            args.source,
            args.data_root,
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            max_examples_per_split=args.max_examples_per_split,
            expected_md5=args.md5,
        )
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split}={count}" for split, count in prepared.split_counts.items())
    print(f"Dataset folder: {prepared.root}")
    print(f"Label names ({len(prepared.label_names)}): {', '.join(prepared.label_names)}")
    print(f"Examples per split: {counts}")
    print(f"Reused existing output: {'yes' if prepared.reused else 'no'}")
    return 0


def _build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.data_preparation",
        description=(
            "Write CIFAR-10, or any dataset of images in train/<class>/ and test/<class>/ "
            "folders, as train, eval and test TFRecord files of tf.train.Example records "
            "with the features image_raw (encoded image bytes) and label (int64)."
        ),
    )
    parser.add_argument(
        "--source",
        default=OFFICIAL_CIFAR10_URL,
        help=(
            "http(s) URL of an archive, a local archive (.tar, .tar.gz, .tgz, .zip) or a "
            "folder; the archive or folder holds the official CIFAR-10 binary layout or images "
            "in train/<class>/ and test/<class>/ folders (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--data-root",
        help=(
            "folder for downloads and prepared datasets; the output goes to "
            "DATA_ROOT/<name>-<12 hex digits>/ (required unless --verify is given)"
        ),
    )
    parser.add_argument(
        "--verify",
        default=None,
        metavar="FOLDER",
        help=(
            "read every record of a prepared dataset folder (local or gs://...), for example "
            "a copy for Kubeflow's --data-root, and exit 2 naming the first truncated file, "
            "empty split or example without an int64 label; nothing is prepared"
        ),
    )
    parser.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        help=(
            "fraction of each class of the train split moved to the eval split, "
            "0 < fraction < 1 (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the random subsampling, eval selection and shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--max-examples-per-split",
        type=int,
        default=None,
        metavar="N",
        help=(
            "maximum number of examples taken for train (before eval is carved out) and for "
            "test, balanced across classes; for quick runs (default: all examples)"
        ),
    )
    parser.add_argument(
        "--md5",
        default=None,
        metavar="HEX",
        help=(
            "expected md5 of the archive, 32 hex digits (default: the published md5 for the "
            f"official URL or a local file named {_OFFICIAL_ARCHIVE_NAME}, else no check)"
        ),
    )
    return parser


# --- Option checks -----------------------------------------------------------------------


def _validate_eval_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataPreparationError(
            f"eval_fraction must be a number between 0 and 1, got {value!r}; for example 0.1."
        )
    fraction = float(value)
    if not 0.0 < fraction < 1.0:  # also false for NaN
        raise DataPreparationError(
            f"eval_fraction must be greater than 0 and less than 1, got {value!r}; "
            "for example 0.1."
        )
    return fraction


def _validate_seed(value: object) -> int:
    try:
        seed = operator.index(value)
    except TypeError as error:
        raise DataPreparationError(f"seed must be an integer, got {value!r}.") from error
    if isinstance(value, bool) or not 0 <= seed < 2**32:
        raise DataPreparationError(
            f"seed must be an integer from 0 to 2**32 - 1 (numpy RandomState), got {value!r}."
        )
    return seed


def _validate_max_examples(value: object) -> int | None:
    if value is None:
        return None
    try:
        limit = operator.index(value)
    except TypeError as error:
        raise DataPreparationError(
            f"max_examples_per_split must be a positive integer or None, got {value!r}."
        ) from error
    if isinstance(value, bool) or limit < 1:
        raise DataPreparationError(
            f"max_examples_per_split must be a positive integer or None (all examples), "
            f"got {value!r}."
        )
    return limit


def _normalize_md5(value: str | None) -> str | None:
    if value is None:
        return None
    md5 = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise DataPreparationError(
            f"Invalid md5 {value!r}: expected 32 hexadecimal digits, for example "
            f"{OFFICIAL_CIFAR10_MD5}."
        )
    return md5


# --- Sources -----------------------------------------------------------------------------


def _prepare_from_url(
    url: str, root: pathlib.Path, options: _Options, expected_md5: str | None
) -> PreparedData:
    if expected_md5 is None and url == OFFICIAL_CIFAR10_URL:
        expected_md5 = OFFICIAL_CIFAR10_MD5
    if expected_md5 is not None:
        # The URL and its verified md5 identify the content, so no download is needed to reuse.
        key = _make_key({"type": "url", "url": url, "md5": expected_md5}, options)
        existing = _find_complete_output(root, key)
        if existing is not None:
            return existing

    archive, actual_md5 = _download(url, root / "downloads", expected_md5)
    key = _make_key({"type": "url", "url": url, "md5": actual_md5}, options)
    existing = _find_complete_output(root, key)
    if existing is not None:
        return existing
    kind = _archive_kind(archive)
    return _prepare_from_archive_contents(archive, kind, root, key, url, options)


def _prepare_from_archive(
    path: pathlib.Path, root: pathlib.Path, options: _Options, expected_md5: str | None
) -> PreparedData:
    kind = _archive_kind(path)
    if expected_md5 is None and path.name == _OFFICIAL_ARCHIVE_NAME:
        # A file with the official name is taken to be the official archive. A subset that a
        # user made must have another name or come with its own md5.
        expected_md5 = OFFICIAL_CIFAR10_MD5
    logger.info("Computing checksums of %s", path)
    sha256, md5 = _file_digests(path)
    if expected_md5 is not None:
        if md5 != expected_md5:
            raise DataPreparationError(
                f"md5 mismatch for {path}: expected {expected_md5}, got {md5}. The file is "
                "corrupt or a different archive; download it again, or pass --md5 with the "
                f"archive's own md5 (a file named {_OFFICIAL_ARCHIVE_NAME} is checked against "
                "the official md5 unless --md5 is given)."
            )
        logger.info("Verified md5 %s of %s", md5, path)

    key = _make_key({"type": "file", "sha256": sha256}, options)
    existing = _find_complete_output(root, key)
    if existing is not None:
        return existing
    return _prepare_from_archive_contents(path, kind, root, key, str(path.absolute()), options)


def _prepare_from_archive_contents(
    archive: pathlib.Path,
    kind: str,
    root: pathlib.Path,
    key: dict,
    source_description: str,
    options: _Options,
) -> PreparedData:
    work_folder = root / _temporary_name("unpack")
    work_folder.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            tree = _open_archive_tree(archive, kind, work_folder, stack)
            layout, layout_root = _detect_layout(tree)
            listing = _scan_image_folders(tree, layout_root) if layout == _IMAGES_LAYOUT else None
            source_data = _load_source(tree, layout, layout_root, listing)
            return _build_output(source_data, root, key, source_description, options)
    finally:
        shutil.rmtree(work_folder, ignore_errors=True)


def _prepare_from_folder(
    folder: pathlib.Path, root: pathlib.Path, options: _Options
) -> PreparedData:
    tree = _FolderTree(folder)
    layout, layout_root = _detect_layout(tree)
    if layout == _IMAGES_LAYOUT:
        listing = _scan_image_folders(tree, layout_root)
        files = [path for entries in listing.files.values() for path, _ in entries]
    else:
        listing = None
        files = _binary_layout_files(tree, layout_root)

    # Folder identity: every file used, with size and modification time, so that an edited
    # folder gets a new output folder without hashing all image bytes.
    logger.info("Computing the identity of %d files in %s", len(files), folder)
    entries = []
    for path in files:
        stat = tree.stat(path)
        entries.append([path, stat.st_size, stat.st_mtime_ns])
    entries.sort()
    listing_json = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    identity = {
        "type": "folder",
        "files": len(entries),
        "listing_sha256": hashlib.sha256(listing_json).hexdigest(),
    }
    key = _make_key(identity, options)
    existing = _find_complete_output(root, key)
    if existing is not None:
        return existing
    source_data = _load_source(tree, layout, layout_root, listing)
    return _build_output(source_data, root, key, str(folder.absolute()), options)


def _detect_layout(tree: _SourceTree) -> tuple[str, str]:
    """Return the layout name and the folder that contains it: the top or its only subfolder."""
    top_level = [
        name
        for name, _ in tree.children("")
        if not name.startswith(".") and name not in _IGNORED_TOP_LEVEL
    ]
    candidates = [""]
    if len(top_level) == 1 and tree.kind(top_level[0]) == "dir":
        candidates.append(top_level[0])

    for candidate in candidates:
        binary_folder = _join(candidate, _BINARY_FOLDER)
        if tree.kind(binary_folder) == "dir":
            return _BINARY_LAYOUT, binary_folder
        binary_files = (_BINARY_META_FILE, _BINARY_TRAIN_FILES[0])
        if any(tree.kind(_join(candidate, name)) == "file" for name in binary_files):
            return _BINARY_LAYOUT, candidate
        has_train = tree.kind(_join(candidate, "train")) == "dir"
        has_test = tree.kind(_join(candidate, "test")) == "dir"
        if has_train and has_test:
            return _IMAGES_LAYOUT, candidate
        if has_train or has_test:
            _reject_other_letter_case(tree, candidate)
            found, missing = ("train", "test") if has_train else ("test", "train")
            raise DataPreparationError(
                f"The {tree.description} has a {found}/ folder in "
                f"{tree.display(candidate)} but no {missing}/ folder; the image-folder "
                "layout needs both train/<class>/ and test/<class>/."
            )

    for candidate in candidates:
        _reject_other_letter_case(tree, candidate)
    listed_entries = ", ".join(top_level[:10]) + (", ..." if len(top_level) > 10 else "")
    raise DataPreparationError(
        f"The {tree.description} has neither the CIFAR-10 binary layout ({_BINARY_FOLDER}/ "
        f"with {', '.join(_BINARY_TRAIN_FILES)}, {_BINARY_TEST_FILE} and {_BINARY_META_FILE}) "
        "nor the image-folder layout (train/<class>/ and test/<class>/, at the top or inside "
        f"one top-level folder). Top-level entries found: {listed_entries or 'none'}."
    )


def _reject_other_letter_case(tree: _SourceTree, folder: str) -> None:
    """Raise when `folder` has train/ or test/ in other letter case, such as Train/."""
    misspelled = [
        name
        for name, kind in tree.children(folder)
        if kind == "dir" and name.lower() in ("train", "test") and name not in ("train", "test")
    ]
    if misspelled:
        found = ", ".join(f"{name}/" for name in misspelled)
        raise DataPreparationError(
            f"The {tree.description} has {found} in {tree.display(folder)}, but folder names "
            "are case-sensitive and the image-folder layout needs lowercase train/<class>/ "
            "and test/<class>/. Rename the folders."
        )


def _load_source(
    tree: _SourceTree, layout: str, layout_root: str, listing: _ImageListing | None
) -> _SourceData:
    if layout == _BINARY_LAYOUT:
        return _load_binary_layout(tree, layout_root)
    assert listing is not None
    return _load_image_layout(tree, listing)


# --- Download ----------------------------------------------------------------------------


def _download(url: str, folder: pathlib.Path, expected_md5: str | None) -> tuple[pathlib.Path, str]:
    """Download `url` into `folder` unless an earlier download is there.

    Returns the path of the archive and its md5.
    """
    target = folder / _download_file_name(url)
    if target.is_file():
        # Downloads reach their final name only through os.replace, so the file is complete.
        actual_md5 = _file_digests(target)[1]
        if expected_md5 is None:
            logger.warning(
                "Reusing the earlier download %s of %s without verification (md5 %s). Pass "
                "--md5 to verify it.",
                target,
                url,
                actual_md5,
            )
            return target, actual_md5
        if actual_md5 == expected_md5:
            logger.info("Reusing the earlier download %s (md5 %s verified)", target, actual_md5)
            return target, actual_md5
        logger.warning(
            "The earlier download %s has md5 %s, expected %s. Deleting it and downloading again.",
            target,
            actual_md5,
            expected_md5,
        )
        target.unlink()

    if expected_md5 is None:
        logger.warning(
            "No md5 is known for %s, so the download will not be verified. Pass --md5 to "
            "verify it.",
            url,
        )
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    temporary = folder / _temporary_name(target.name)
    try:
        actual_md5 = _fetch(url, temporary)
        if expected_md5 is not None and actual_md5 != expected_md5:
            raise DataPreparationError(
                f"md5 mismatch for the download of {url}: expected {expected_md5}, got "
                f"{actual_md5}. The downloaded file was deleted. Check the URL and the --md5 "
                f"value, or {_SOURCE_HINT}."
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    if expected_md5 is not None:
        logger.info("Verified md5 %s of %s", actual_md5, target)
    return target, actual_md5


def _download_file_name(url: str) -> str:
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if name in ("", ".", ".."):
        raise DataPreparationError(
            f"Cannot derive a file name from the URL {url!r}. The URL path must end with the "
            f"archive's file name, for example .../{_OFFICIAL_ARCHIVE_NAME}."
        )
    return name


def _fetch(url: str, destination: pathlib.Path) -> str:
    """Stream `url` into `destination` and return its md5."""
    logger.info("Downloading %s to %s", url, destination.parent)
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            destination.open("wb") as file,
        ):
            length_header = response.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            next_report = 0.1 if total else 10 * _MEGABYTE
            while chunk := response.read(_READ_CHUNK_BYTES):
                file.write(chunk)
                md5.update(chunk)
                received += len(chunk)
                if total and received / total >= next_report:
                    logger.info(
                        "Downloaded %d%% (%.1f of %.1f MB)",
                        100 * received // total,
                        received / _MEGABYTE,
                        total / _MEGABYTE,
                    )
                    next_report = math.floor(10 * received / total) / 10 + 0.1
                elif not total and received >= next_report:
                    logger.info("Downloaded %.1f MB", received / _MEGABYTE)
                    next_report += 10 * _MEGABYTE
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise DataPreparationError(
            f"Download of {url} failed: {error}. Check the network connection and the URL, "
            f"or {_SOURCE_HINT}."
        ) from error
    if total is not None and received != total:
        raise DataPreparationError(
            f"Download of {url} is incomplete: received {received} of {total} bytes. Try "
            f"again, or {_SOURCE_HINT}."
        )
    logger.info("Downloaded %.1f MB from %s", received / _MEGABYTE, url)
    return md5.hexdigest()


def _file_digests(path: pathlib.Path) -> tuple[str, str]:
    """Return the sha256 and md5 hex digests of a file."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(_READ_CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


# --- Source trees ------------------------------------------------------------------------
# Folders and archives are read through one interface of relative POSIX paths, where "" is
# the top. Archives are read in place instead of being extracted, because creating one file
# per image was the slowest step. On a 2-CPU VM with an ext4 disk, `tar xzf` of the 60,000
# CIFAR-10 JPEG files took 35 s, and the whole preparation without extraction takes 9 s.


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


class _SourceTree(abc.ABC):
    """Read-only files and folders of a source, addressed by relative POSIX paths."""

    description: str

    @abc.abstractmethod
    def kind(self, path: str) -> str | None:
        """Return "dir", "file", "other" (such as a device or broken link) or None if missing."""

    @abc.abstractmethod
    def children(self, path: str) -> list[tuple[str, str]]:
        """Return the (name, kind) pairs of the entries of folder `path`, sorted by name."""

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def display(self, path: str) -> str:
        """Return `path` as shown in messages."""


class _FolderTree(_SourceTree):
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.description = f"folder {root}"

    def kind(self, path: str) -> str | None:
        full_path = self.root / path
        if full_path.is_dir():
            return "dir"
        if full_path.is_file():
            return "file"
        if full_path.is_symlink() or full_path.exists():
            return "other"
        return None

    def children(self, path: str) -> list[tuple[str, str]]:
        with os.scandir(self.root / path) as entries:
            found = [(entry.name, _directory_entry_kind(entry)) for entry in entries]
        return sorted(found)

    def read_bytes(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def stat(self, path: str) -> os.stat_result:
        return (self.root / path).stat()

    def display(self, path: str) -> str:
        return str(self.root / path)


def _directory_entry_kind(entry: os.DirEntry) -> str:
    if entry.is_dir():
        return "dir"
    if entry.is_file():
        return "file"
    return "other"


class _ArchiveTree(_SourceTree):
    """Files and folders of an archive, built from its member names."""

    def __init__(self, archive: pathlib.Path, read_member: Callable[[object], bytes]) -> None:
        self.description = f"archive {archive}"
        self._archive = archive
        self._read_member = read_member
        self._children: dict[str, dict[str, str]] = {"": {}}
        self._members: dict[str, object] = {}

    def add(self, path: str, member: object | None) -> None:
        """Add a file with its archive member, or a folder when `member` is None."""
        parent = ""
        for part in path.split("/")[:-1]:
            folder = _join(parent, part)
            self._children[parent][part] = "dir"
            self._children.setdefault(folder, {})
            parent = folder
        name = path.rpartition("/")[2]
        if member is None:
            self._children[parent][name] = "dir"
            self._children.setdefault(path, {})
        else:
            self._children[parent][name] = "file"
            self._members[path] = member

    def kind(self, path: str) -> str | None:
        if not path:
            return "dir"
        parent, _, name = path.rpartition("/")
        return self._children.get(parent, {}).get(name)

    def children(self, path: str) -> list[tuple[str, str]]:
        return sorted(self._children.get(path, {}).items())

    def read_bytes(self, path: str) -> bytes:
        try:
            return self._read_member(self._members[path])
        except _ARCHIVE_ERRORS as error:
            raise DataPreparationError(
                f"Reading {self.display(path)} failed: {error}. The archive is corrupt or "
                "incomplete. Download or create it again."
            ) from error

    def display(self, path: str) -> str:
        return f"{path} in {self._archive}" if path else str(self._archive)


# Exceptions of tarfile, zipfile and the decompressors for corrupt or truncated archives.
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
)

# Magic bytes of the compressed tar formats that tarfile reads.
_COMPRESSED_TAR_OPENERS = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)


def _archive_kind(path: pathlib.Path) -> str:
    """Return "zip" or "tar" from the file's content; the file name is not used."""
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DataPreparationError(
        f"{path} is not a readable tar (.tar, .tar.gz, .tgz) or zip archive. Pass the CIFAR-10 "
        f"archive ({_OFFICIAL_ARCHIVE_NAME}), an archive or folder of images in "
        "train/<class>/ and test/<class>/ folders, or an http(s) URL."
    )


def _open_archive_tree(
    archive: pathlib.Path, kind: str, work_folder: pathlib.Path, stack: contextlib.ExitStack
) -> _ArchiveTree:
    """Open `archive` for reading in place, after rejecting every unsafe member.

    A compressed tar is first decompressed to one plain tar in `work_folder`, so that members
    can be read in any order without decompressing the archive again. The archive stays open
    until `stack` closes.
    """
    try:
        if kind == "zip":
            zip_file = stack.enter_context(zipfile.ZipFile(archive))
            return _build_zip_tree(archive, zip_file)
        plain_tar = _decompress_tar(archive, work_folder)
        tar = stack.enter_context(tarfile.open(plain_tar, mode="r:"))  # noqa: SIM115
        return _build_tar_tree(archive, tar)
    except _ARCHIVE_ERRORS as error:
        raise DataPreparationError(
            f"Reading {archive} failed: {error}. The archive is corrupt or incomplete. "
            "Download or create it again."
        ) from error


def _decompress_tar(archive: pathlib.Path, work_folder: pathlib.Path) -> pathlib.Path:
    with archive.open("rb") as file:
        magic = file.read(6)
    for prefix, open_compressed in _COMPRESSED_TAR_OPENERS:
        if magic.startswith(prefix):
            plain_tar = work_folder / "archive.tar"
            logger.info("Decompressing %s to %s", archive, plain_tar)
            with open_compressed(archive, "rb") as source, plain_tar.open("wb") as target:
                shutil.copyfileobj(source, target, _READ_CHUNK_BYTES)
            return plain_tar
    return archive


def _build_tar_tree(archive: pathlib.Path, tar: tarfile.TarFile) -> _ArchiveTree:
    members = tar.getmembers()
    for member in members:
        _check_tar_member(member)
    logger.info("Read the index of %d members of %s", len(members), archive)

    def read_member(member: object) -> bytes:
        # extractfile follows links to their target member inside the archive.
        with tar.extractfile(member) as file:
            return file.read()

    tree = _ArchiveTree(archive, read_member)
    links = []
    for member in members:
        path = _normalize_member_name(member.name)
        if not path:
            continue
        if member.isdir():
            tree.add(path, None)
        elif member.issym() or member.islnk():
            links.append((path, member))
        else:
            tree.add(path, member)

    # A link is added as a file once its target is added, so chains of links take several
    # passes.
    while links:
        unresolved = []
        for path, member in links:
            target = _link_target(member)
            target_kind = tree.kind(target)
            if target_kind == "file":
                tree.add(path, member)
            elif target_kind == "dir":
                _reject_member(
                    member.name,
                    f"it links to the folder {target!r}, and links to folders are not "
                    "supported in archives",
                )
            else:
                unresolved.append((path, member))
        if len(unresolved) == len(links):
            member = unresolved[0][1]
            _reject_member(member.name, f"its link target {member.linkname!r} is missing")
        links = unresolved
    return tree


def _build_zip_tree(archive: pathlib.Path, zip_file: zipfile.ZipFile) -> _ArchiveTree:
    members = zip_file.infolist()
    for info in members:
        _check_zip_member(info.filename)
    logger.info("Read the index of %d members of %s", len(members), archive)
    tree = _ArchiveTree(archive, zip_file.read)
    for info in members:
        path = _normalize_member_name(info.filename)
        if path:
            tree.add(path, None if info.is_dir() else info)
    return tree


def _normalize_member_name(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _link_target(member: tarfile.TarInfo) -> str:
    # A symbolic link target is relative to the member's folder, a hard link target to the top.
    base = posixpath.dirname(member.name) if member.issym() else ""
    return _normalize_member_name(posixpath.normpath(posixpath.join(base, member.linkname)))


def _check_tar_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/"):
        _reject_member(name, "it has an absolute path")
    if ".." in pathlib.PurePosixPath(name).parts:
        _reject_member(name, "its path contains '..'")
    if member.isdev():
        _reject_member(name, "it is a device or FIFO, not a regular file or folder")
    if member.issym() or member.islnk():
        if member.linkname.startswith("/"):
            _reject_member(name, f"it links to the absolute path {member.linkname!r}")
        target = _link_target(member)
        if target == ".." or target.startswith("../"):
            _reject_member(name, f"it links to {member.linkname!r}, outside the archive")


def _check_zip_member(name: str) -> None:
    # zipfile.extractall would silently strip these parts, so the archive is rejected instead.
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        _reject_member(name, "it has an absolute path")
    if ".." in re.split(r"[\\/]", name):
        _reject_member(name, "its path contains '..'")


def _reject_member(name: str, reason: str) -> None:
    raise DataPreparationError(
        f"Unsafe archive member {name!r}: {reason}. Nothing was read from the archive. "
        "Rebuild it with relative paths that stay inside it."
    )


# --- Official binary layout --------------------------------------------------------------


def _binary_layout_files(tree: _SourceTree, folder: str) -> list[str]:
    names = [*_BINARY_TRAIN_FILES, _BINARY_TEST_FILE, _BINARY_META_FILE]
    missing = [name for name in names if tree.kind(_join(folder, name)) != "file"]
    if missing:
        raise DataPreparationError(
            f"The CIFAR-10 binary folder {tree.display(folder)} is missing "
            f"{', '.join(missing)}. Use the complete archive {_OFFICIAL_ARCHIVE_NAME}."
        )
    return [_join(folder, name) for name in names]


def _load_binary_layout(tree: _SourceTree, folder: str) -> _SourceData:
    _binary_layout_files(tree, folder)
    meta_path = _join(folder, _BINARY_META_FILE)
    label_names = _parse_binary_label_names(tree.read_bytes(meta_path), tree.display(meta_path))
    logger.info("Reading CIFAR-10 binary batches from %s", tree.display(folder))
    batches = []
    for name in (*_BINARY_TRAIN_FILES, _BINARY_TEST_FILE):
        path = _join(folder, name)
        batches.append(
            _parse_binary_batch(tree.read_bytes(path), tree.display(path), len(label_names))
        )
    train_labels = np.concatenate([labels for labels, _ in batches[:-1]])
    train_pixels = np.concatenate([pixels for _, pixels in batches[:-1]])
    test_labels, test_pixels = batches[-1]
    logger.info(
        "Read %d train and %d test records with %d label names",
        train_labels.size,
        test_labels.size,
        len(label_names),
    )
    return _SourceData(
        layout=_BINARY_LAYOUT,
        label_names=label_names,
        train=_SourceSplit(train_labels, _png_encoder(train_pixels)),
        test=_SourceSplit(test_labels, _png_encoder(test_pixels)),
    )


def _parse_binary_label_names(data: bytes, origin: str) -> tuple[str, ...]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataPreparationError(
            f"{origin} is not UTF-8 text ({error}). It must list one class name per line."
        ) from error
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise DataPreparationError(
            f"{origin} lists no label names. It must contain one class name per line."
        )
    _validate_label_names(names, origin)
    return names


def _parse_binary_batch(
    data: bytes, origin: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the labels (int64, N) and pixels (uint8, N x 32 x 32 x 3) of one .bin file."""
    if not data or len(data) % _BINARY_RECORD_BYTES:
        raise DataPreparationError(
            f"{origin} has {len(data)} bytes, which is not a positive multiple of the "
            f"{_BINARY_RECORD_BYTES}-byte CIFAR-10 record (1 label byte and 3072 pixel bytes). "
            "The file is truncated or not a CIFAR-10 binary batch. Use the complete archive."
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _BINARY_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    invalid = np.flatnonzero(labels >= num_classes)
    if invalid.size:
        record = int(invalid[0])
        raise DataPreparationError(
            f"{origin} record {record} has label {labels[record]}, but {_BINARY_META_FILE} "
            f"lists {num_classes} label names, so labels must be 0 to {num_classes - 1}. The "
            "file is corrupt or does not belong to this archive."
        )
    pixels = records[:, 1:].reshape(-1, 3, _IMAGE_SIDE, _IMAGE_SIDE).transpose(0, 2, 3, 1)
    return labels, pixels


def _png_encoder(pixels: np.ndarray) -> Callable[[int], bytes]:
    def encode(index: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels[index])).save(buffer, format="PNG")
        return buffer.getvalue()

    return encode


# --- Image-folder layout -----------------------------------------------------------------


def _scan_image_folders(tree: _SourceTree, root: str) -> _ImageListing:
    """List the images of `root/train/<class>/` and `root/test/<class>/` without reading them."""
    logger.info("Scanning image folders in %s", tree.display(root))
    train_classes = _class_folder_names(tree, _join(root, "train"))
    test_classes = _class_folder_names(tree, _join(root, "test"))
    if not train_classes:
        raise DataPreparationError(
            f"{tree.display(_join(root, 'train'))} contains no class folders. Put the images "
            "in train/<class>/ folders."
        )
    if set(train_classes) != set(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataPreparationError(
            f"The class folders of train/ and test/ in {tree.display(root)} differ. Only in "
            f"train: {only_train or 'none'}. Only in test: {only_test or 'none'}. Both "
            "splits need the same class folders."
        )
    label_names = tuple(train_classes)
    _validate_label_names(label_names, tree.display(_join(root, "train")))

    files: dict[str, list[tuple[str, int]]] = {}
    skipped = []
    for split in ("train", "test"):
        entries = []
        for label, name in enumerate(label_names):
            class_folder = _join(root, split, name)
            images, skipped_names = _class_image_files(tree, class_folder)
            if not images:
                skipped_text = f" (skipped: {skipped_names[:5]})" if skipped_names else ""
                raise DataPreparationError(
                    f"The class folder {tree.display(class_folder)} contains no images"
                    f"{skipped_text}. Add images or remove the class folder {name!r} from both "
                    "train/ and test/."
                )
            entries.extend((path, label) for path in images)
            skipped.extend(_join(split, name, skipped_name) for skipped_name in skipped_names)
        files[split] = entries
    if skipped:
        logger.warning(
            "Skipping %d hidden or non-image files in the class folders of %s, such as %s. "
            "Only files with an image extension (.jpg, .png, ...) are read.",
            len(skipped),
            tree.display(root),
            ", ".join(repr(path) for path in skipped[:5]),
        )
    logger.info(
        "Found %d classes, %d train and %d test images",
        len(label_names),
        len(files["train"]),
        len(files["test"]),
    )
    return _ImageListing(label_names=label_names, files=files)


def _class_folder_names(tree: _SourceTree, split_folder: str) -> list[str]:
    names = []
    stray_files = []
    for name, kind in tree.children(split_folder):
        if name.startswith("."):
            continue
        if kind == "dir":
            names.append(name)
        else:
            stray_files.append(name)
    if stray_files:
        logger.warning(
            "Skipping %d files directly in %s, such as %r. Images must be in <class>/ folders.",
            len(stray_files),
            tree.display(split_folder),
            stray_files[0],
        )
    return names


def _class_image_files(tree: _SourceTree, class_folder: str) -> tuple[list[str], list[str]]:
    """Return the image files of a class folder and the names of the files skipped in it.

    Hidden files (names starting with "." such as .DS_Store and macOS' ._ files) and files
    whose extension is not an image format that PIL opens (README.txt, Thumbs.db) are
    skipped, as Keras' image_dataset_from_directory and torchvision's ImageFolder do.
    """
    paths = []
    skipped = []
    for name, kind in tree.children(class_folder):
        if name.startswith("."):
            skipped.append(name)
            continue
        path = _join(class_folder, name)
        if kind == "dir":
            raise DataPreparationError(
                f"{tree.display(path)} is a folder inside a class folder, and nested folders "
                "are not supported. Move its images into the class folder or remove it."
            )
        if kind != "file":
            raise DataPreparationError(
                f"{tree.display(path)} is not a regular file (for example a broken symbolic "
                "link). Remove it."
            )
        if posixpath.splitext(name)[1].lower() not in _image_extensions():
            skipped.append(name)
            continue
        paths.append(path)
    return paths, skipped


@functools.cache
def _image_extensions() -> frozenset[str]:
    """Return the file extensions, such as ".jpg", of the image formats that PIL can open."""
    return frozenset(
        extension
        for extension, image_format in Image.registered_extensions().items()
        if image_format in Image.OPEN
    )


def _validate_label_names(names: Sequence[str], origin: str) -> None:
    for name in names:
        if "\n" in name or "\r" in name:
            raise DataPreparationError(
                f"Class name {name!r} from {origin} contains a line break, which "
                "label_names.txt cannot store; rename it."
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataPreparationError(
            f"{origin} lists the class names {duplicates} more than once. Class names must be "
            "unique."
        )


def _load_image_layout(tree: _SourceTree, listing: _ImageListing) -> _SourceData:
    splits = {}
    for split, entries in listing.files.items():
        paths = [path for path, _ in entries]
        needs_png = _inspect_images(tree, paths, split)
        labels = np.array([label for _, label in entries], dtype=np.int64)
        splits[split] = _SourceSplit(labels, _image_file_encoder(tree, paths, needs_png))
    return _SourceData(
        layout=_IMAGES_LAYOUT,
        label_names=listing.label_names,
        train=splits["train"],
        test=splits["test"],
    )


def _inspect_images(tree: _SourceTree, paths: Sequence[str], split: str) -> list[bool]:
    """Decode each image with PIL and return, per image, whether it needs conversion to PNG."""
    # Every image is decoded in full: PIL's verify() reads only a JPEG's headers, so a
    # truncated file would pass it and then fail inside Transform, far from its path.
    progress = _ProgressLog(f"Verifying {split} images", len(paths))
    needs_png = []
    rotated = 0
    for path in paths:
        data = tree.read_bytes(path)
        if not data:
            raise DataPreparationError(
                f"{tree.display(path)} is empty (0 bytes), for example from an interrupted "
                "copy. Copy the image again or remove the file."
            )
        try:
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format
                # Image.open reads only the header, so the size is checked before decoding.
                _check_pixel_count(image.size, tree.display(path))
                image.load()
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except DataPreparationError:
            raise
        except Image.DecompressionBombError as error:
            # PIL rejects headers of more than 2 * Image.MAX_IMAGE_PIXELS in Image.open,
            # before the check above can run.
            raise DataPreparationError(
                f"{tree.display(path)} is larger than the limit of {MAX_IMAGE_PIXELS} pixels "
                f"({error}). Downscale the image or remove the file."
            ) from error
        except Exception as error:  # PIL plugins raise many exception types for broken files.
            if isinstance(error, UnidentifiedImageError):
                reason = "PIL does not recognize its format"
            else:
                reason = f"{type(error).__name__}: {error}"
            raise DataPreparationError(
                f"{tree.display(path)} is not a readable image ({reason}). Remove the file or "
                "replace it with a valid image."
            ) from error
        # TensorFlow's decoders ignore the EXIF orientation tag. A rotated image is therefore
        # stored as PNG with the rotation applied, and the model trains on the upright image.
        is_rotated = orientation != 1
        rotated += is_rotated
        needs_png.append(image_format not in _KEPT_FORMATS or is_rotated)
        progress.advance()
    converted = sum(needs_png)
    if converted:
        logger.info(
            "Converting %d %s images to PNG: %d with an EXIF orientation applied, the others "
            "of formats that TensorFlow cannot decode",
            converted,
            split,
            rotated,
        )
    return needs_png


def _check_pixel_count(size: tuple[int, int], origin: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataPreparationError(
            f"{origin} is {width} x {height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
            "pixels (MAX_IMAGE_PIXELS). It was not decoded, because a small file with such a "
            "header is a common decompression bomb. Downscale the image or remove the file."
        )


def _image_file_encoder(
    tree: _SourceTree, paths: Sequence[str], needs_png: Sequence[bool]
) -> Callable[[int], bytes]:
    def encode(index: int) -> bytes:
        data = tree.read_bytes(paths[index])
        if not needs_png[index]:
            return data
        return _convert_to_png(data, tree.display(paths[index]))

    return encode


def _convert_to_png(data: bytes, origin: str) -> bytes:
    """Encode the image as PNG, upright by its EXIF orientation, with 8 or 16 bits per channel."""
    # NOTE: only the first frame of a multi-frame file (TIFF, animated WebP) is kept.
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _png_compatible(image, origin)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except DataPreparationError:
        raise
    except Exception as error:  # PIL plugins raise many exception types for broken files.
        raise DataPreparationError(
            f"{origin} could not be converted to PNG ({type(error).__name__}: {error}). Remove "
            "the file or replace it with a valid image."
        ) from error
    return buffer.getvalue()


def _png_compatible(image: Image.Image, origin: str) -> Image.Image:
    """Return `image` in a mode that PNG stores without losing the range of its values."""
    if image.mode in _PNG_MODES:
        return image
    # PIL's convert("RGB") clips 16- and 32-bit values to 255 instead of scaling them, so
    # 16-bit data is kept as a 16-bit PNG, which tf.io.decode_image scales to 8 bits.
    if image.mode in _16_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 0xFFFF):
            raise DataPreparationError(
                f"{origin} has 32-bit integer pixels outside 0..65535, which have no fixed "
                "range to scale to 8 bits. Convert it to an 8- or 16-bit image."
            )
        return Image.fromarray(pixels.astype(np.uint16), mode="I;16")
    if image.mode == "F":
        raise DataPreparationError(
            f"{origin} has floating-point pixels, which have no fixed range to scale to 8 "
            "bits. Convert it to an 8- or 16-bit image."
        )
    # CMYK, YCbCr, LAB, HSV, PA and others: PIL's standard conversions.
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


# --- Splits and output -------------------------------------------------------------------


def _make_key(source_identity: dict, options: _Options) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "source": source_identity,
        "eval_fraction": options.eval_fraction,
        "seed": options.seed,
        "max_examples_per_split": options.max_examples_per_split,
    }


def _key_digest(key: dict) -> str:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _find_complete_output(root: pathlib.Path, key: dict) -> PreparedData | None:
    digest = _key_digest(key)[:12]
    for layout in _LAYOUTS:
        existing = _load_complete_output(root / f"{layout}-{digest}", key)
        if existing is not None:
            logger.info(
                "Reusing the prepared dataset %s (same source and options) without rewriting it.",
                existing.root,
            )
            return existing
    return None


def _load_complete_output(folder: pathlib.Path, key: dict) -> PreparedData | None:
    """Return the output in `folder` if its manifest matches `key` and its files exist."""
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest_key = manifest["key"]
        files = [
            "label_names.txt",
            *(shard for split in SPLITS for shard in manifest["shards"][split]),
        ]
        # Manifests written before shard sizes were recorded have none to compare.
        shard_bytes = {name: int(size) for name, size in manifest.get("shard_bytes", {}).items()}
        prepared = PreparedData(
            root=folder,
            label_names=tuple(manifest["label_names"]),
            split_counts={split: int(manifest["split_counts"][split]) for split in SPLITS},
            reused=True,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("Ignoring %s, which is unreadable or invalid: %s", manifest_path, error)
        return None

    if manifest_key != key:
        logger.warning("Ignoring %s, which was prepared from another source or options.", folder)
        return None
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        logger.warning("Ignoring %s, which is missing %s.", folder, ", ".join(missing))
        return None
    for name, expected_size in shard_bytes.items():
        size = (folder / name).stat().st_size
        if size != expected_size:
            logger.warning(
                "Ignoring %s: %s has %d bytes, but manifest.json records %d, so the file is "
                "truncated or was changed. The dataset is prepared again.",
                folder,
                folder / name,
                size,
                expected_size,
            )
            return None
    return prepared


def _select_split_indices(
    train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, options: _Options
) -> dict[str, np.ndarray]:
    """Return, per output split, the indices into the source split, in writing order."""
    # One RandomState consumed in a fixed order makes every choice depend only on the inputs.
    random_state = np.random.RandomState(options.seed)
    train = np.arange(train_labels.size)
    test = np.arange(test_labels.size)
    limit = options.max_examples_per_split
    if limit is not None:
        train = _take_balanced(train_labels, limit, num_classes, random_state)
        test = _take_balanced(test_labels, limit, num_classes, random_state)
        if limit < num_classes:
            logger.warning(
                "max_examples_per_split=%d is below the %d classes, so some classes have no "
                "examples.",
                limit,
                num_classes,
            )
    train, evaluation = _carve_eval(
        train_labels, train, options.eval_fraction, num_classes, random_state
    )
    if evaluation.size == 0:
        raise DataPreparationError(
            f"The eval split would be empty: eval_fraction {options.eval_fraction} of "
            f"{train.size} train examples rounds to 0 examples in every class. Raise "
            "--eval-fraction or --max-examples-per-split."
        )
    indices = {"train": train, "eval": evaluation, "test": test}
    return {
        split: indices[split][random_state.permutation(indices[split].size)] for split in SPLITS
    }


def _take_balanced(
    labels: np.ndarray, limit: int, num_classes: int, random_state: np.random.RandomState
) -> np.ndarray:
    """Return at most `limit` indices, taking from the classes in turn in a random order."""
    per_class = [random_state.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    indices = np.concatenate(per_class)
    ranks = np.concatenate([np.arange(members.size) for members in per_class])
    classes = np.concatenate([np.full(members.size, c) for c, members in enumerate(per_class)])
    # Rank 0 of every class comes first, then rank 1, and so on. Ties go to the lower label.
    order = np.lexsort((classes, ranks))
    return np.sort(indices[order[:limit]])


def _carve_eval(
    labels: np.ndarray,
    indices: np.ndarray,
    fraction: float,
    num_classes: int,
    random_state: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into train and eval, moving `fraction` of each class to eval."""
    train_parts = []
    eval_parts = []
    for label in range(num_classes):
        members = random_state.permutation(indices[labels[indices] == label])
        # Round half up, and keep at least one train example of each class that has any.
        count = min(math.floor(members.size * fraction + 0.5), max(members.size - 1, 0))
        eval_parts.append(members[:count])
        train_parts.append(members[count:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(eval_parts))


def _build_output(
    source_data: _SourceData,
    root: pathlib.Path,
    key: dict,
    source_description: str,
    options: _Options,
) -> PreparedData:
    """Write all splits into a temporary folder, then move it to its final name."""
    num_classes = len(source_data.label_names)
    split_indices = _select_split_indices(
        source_data.train.labels, source_data.test.labels, num_classes, options
    )
    digest = _key_digest(key)
    final = root / f"{source_data.layout}-{digest[:12]}"
    temporary = root / _temporary_name(source_data.layout)
    temporary.mkdir()
    try:
        label_text = "".join(f"{name}\n" for name in source_data.label_names)
        (temporary / "label_names.txt").write_text(label_text, encoding="utf-8")
        shards = {}
        class_counts = {}
        for split in SPLITS:
            source_split = source_data.test if split == "test" else source_data.train
            indices = split_indices[split]
            shards[split] = _write_split(temporary, split, source_split, indices)
            counts = np.bincount(source_split.labels[indices], minlength=num_classes)
            class_counts[split] = counts.tolist()
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "key_sha256": digest,
            "layout": source_data.layout,
            "source": source_description,
            "label_names": list(source_data.label_names),
            "split_counts": {split: int(split_indices[split].size) for split in SPLITS},
            "class_counts": class_counts,
            "shards": shards,
            # Sizes let a later run notice a truncated shard without reading it.
            "shard_bytes": {
                shard: (temporary / shard).stat().st_size
                for split in SPLITS
                for shard in shards[split]
            },
            "features": {"image_raw": "bytes", "label": "int64"},
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
        # The manifest is written last: a folder without one is never reused.
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        (temporary / "manifest.json").write_text(manifest_text, encoding="utf-8")
        return _move_into_place(temporary, final, key, manifest)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_split(
    folder: pathlib.Path, split: str, source_split: _SourceSplit, indices: np.ndarray
) -> list[str]:
    """Write one split as TFRecord shards and return their paths relative to `folder`."""
    import tensorflow as tf  # Imported here so that --help and input errors stay fast.

    split_folder = folder / split
    split_folder.mkdir()
    num_shards = max(1, math.ceil(indices.size / MAX_EXAMPLES_PER_SHARD))
    logger.info("Writing split %s: %d examples in %d shards", split, indices.size, num_shards)
    progress = _ProgressLog(f"Writing {split}", int(indices.size))
    shard_paths = []
    for shard_number, shard_indices in enumerate(np.array_split(indices, num_shards)):
        name = f"{split}-{shard_number:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(split_folder / name)) as writer:
            for index in shard_indices:
                image_bytes = source_split.encode(int(index))
                label = int(source_split.labels[index])
                writer.write(_serialize_example(tf, image_bytes, label))
                progress.advance()
        shard_paths.append(f"{split}/{name}")
    return shard_paths


def _serialize_example(tf, image_bytes: bytes, label: int) -> bytes:
    feature = {
        "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def _move_into_place(
    temporary: pathlib.Path, final: pathlib.Path, key: dict, manifest: dict
) -> PreparedData:
    existing = _load_complete_output(final, key)
    if existing is not None:
        logger.info("Another run finished %s first, so its output is used.", final)
        return existing
    if final.exists():
        logger.warning("Replacing %s, which has no valid manifest.json.", final)
        shutil.rmtree(final)
    try:
        os.replace(temporary, final)
    except OSError as error:
        existing = _load_complete_output(final, key)
        if existing is not None:
            logger.info("Another run finished %s first, so its output is used.", final)
            return existing
        raise DataPreparationError(
            f"Cannot move the prepared dataset to {final}: {error}. Check that the data root "
            "is writable and that no other program uses that folder."
        ) from error
    logger.info("Prepared dataset in %s: %s", final, manifest["split_counts"])
    return PreparedData(
        root=final,
        label_names=tuple(manifest["label_names"]),
        split_counts=dict(manifest["split_counts"]),
        reused=False,
    )


# --- Temporary files ---------------------------------------------------------------------


def _temporary_name(label: str) -> str:
    return staging.temporary_name(label)


def _remove_stale_temporaries(folder: pathlib.Path) -> None:
    """Remove temporary files and folders in `folder` whose process on this host has ended."""
    for entry in folder.iterdir():
        match = staging.abandoned_temporary(entry.name)
        if match is None:
            continue
        logger.info("Removing %s, left by an interrupted run (process %s)", entry, match["pid"])
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
