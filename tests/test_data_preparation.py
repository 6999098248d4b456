"""Tests of components.data_preparation on small archives and folders built in each test.

Image-folder tests copy a small subset of the real CIFAR-10 JPEG archive at
conftest.CIFAR10_ARCHIVE (the environment variable CIFAR10_IMAGES_ARCHIVE overrides it) and
fail when it is missing. Downloads come from an HTTP server on 127.0.0.1 that the tests start.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import io
import math
import os
import pathlib
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import CIFAR10_ARCHIVE as CIFAR_IMAGES_ARCHIVE
from conftest import LABEL_NAMES as CIFAR_CLASSES
from conftest import REPO_ROOT
from PIL import ExifTags, Image, ImageOps

from components import data_preparation as dp
from components import staging

BINARY_FILES = (*(f"data_batch_{number}.bin" for number in range(1, 6)), "test_batch.bin")
IMAGES_PER_CLASS = 20


# --- Helpers -----------------------------------------------------------------------------


def write_tar(path: pathlib.Path, files: dict[str, bytes], mode: str = "w:gz") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zip_file:
        for name, data in files.items():
            zip_file.writestr(name, data)
    return path


def write_folder(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def binary_dataset_files(records_per_file: int = 20) -> tuple[dict[str, bytes], dict]:
    """Return the files of an official-layout dataset and, per .bin file, labels and pixels.

    Labels cycle through 0..9 so every class is present. Pixels are random but seeded.
    """
    files = {}
    records = {}
    for number, name in enumerate(BINARY_FILES):
        random_state = np.random.RandomState(number)
        labels = (np.arange(records_per_file) % 10).astype(np.uint8)
        pixels = random_state.randint(0, 256, size=(records_per_file, 3072), dtype=np.uint8)
        files[f"cifar-10-batches-bin/{name}"] = np.concatenate(
            [labels[:, None], pixels], axis=1
        ).tobytes()
        records[name] = (labels, pixels)
    # Trailing blank lines in batches.meta.txt must be ignored.
    meta = "\n".join(CIFAR_CLASSES) + "\n\n"
    files["cifar-10-batches-bin/batches.meta.txt"] = meta.encode()
    return files, records


def record_image(pixels: np.ndarray) -> np.ndarray:
    """Convert one 3072-byte record (R, G, B planes) to a 32 x 32 x 3 array."""
    return pixels.reshape(3, 32, 32).transpose(1, 2, 0)


def read_split(root: pathlib.Path, split: str) -> list[tuple[bytes, int]]:
    """Return (image_raw, label) of every example of a split, in file order."""
    files = sorted((root / split).glob(f"{split}-*-of-*.tfrecord"))
    examples = []
    for record in tf.data.TFRecordDataset([str(path) for path in files]):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        assert set(features) == {"image_raw", "label"}
        image_raw = features["image_raw"].bytes_list.value[0]
        label = features["label"].int64_list.value[0]
        examples.append((image_raw, label))
    return examples


def png_bytes(color: tuple[int, int, int], image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=image_format)
    return buffer.getvalue()


def small_image_files(classes: dict[str, list[str]]) -> dict[str, bytes]:
    """Return PNG files for split -> class names, 4 distinct images per class."""
    files = {}
    for split, names in classes.items():
        for class_index, name in enumerate(names):
            for number in range(4):
                color = (class_index * 20, number * 40, 100 if split == "train" else 200)
                files[f"{split}/{name}/{number}.png"] = png_bytes(color)
    return files


def file_mtimes(root: pathlib.Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in root.rglob("*")}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested_paths: list[str]

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.requested_paths.append(self.path)
        super().do_GET()


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """Keep urllib from sending loopback requests to a proxy from the environment."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1; yields (folder, base URL, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requested_paths: list[str] = []
    handler = functools.partial(
        type("Handler", (_QuietHandler,), {"requested_paths": requested_paths}),
        directory=str(served),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}", requested_paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def cifar_jpeg_files() -> dict[str, bytes]:
    """Return the first 20 JPEG files per class and split of the real CIFAR-10 archive."""
    if not CIFAR_IMAGES_ARCHIVE.is_file():
        pytest.fail(
            f"Real CIFAR-10 images not found at {CIFAR_IMAGES_ARCHIVE}. Set "
            "CIFAR10_IMAGES_ARCHIVE to a copy of cifar10-images.tar.gz."
        )
    files = {}
    taken_counts = collections.Counter()
    with tarfile.open(CIFAR_IMAGES_ARCHIVE, "r|gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            split, class_name, _ = member.name.split("/")
            if taken_counts[split, class_name] < IMAGES_PER_CLASS:
                taken_counts[split, class_name] += 1
                files[member.name] = tar.extractfile(member).read()
    assert len(files) == 2 * len(CIFAR_CLASSES) * IMAGES_PER_CLASS
    return files


# --- Download ----------------------------------------------------------------------------


def test_download_verifies_md5_and_pixels(http_server, tmp_path):
    served, base_url, _ = http_server
    files, records = binary_dataset_files()
    archive = write_tar(served / "cifar-10-binary.tar.gz", files)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data_root = tmp_path / "data"

    prepared = dp.prepare_dataset(f"{base_url}/cifar-10-binary.tar.gz", data_root, expected_md5=md5)

    assert prepared.reused is False
    assert prepared.root.parent == data_root
    assert prepared.root.name.startswith("cifar10-binary-")
    assert prepared.label_names == CIFAR_CLASSES
    assert dp.read_label_names(prepared.root) == CIFAR_CLASSES
    assert prepared.split_counts == {"train": 90, "eval": 10, "test": 20}
    assert (data_root / "downloads" / "cifar-10-binary.tar.gz").read_bytes() == archive.read_bytes()

    # Every written example must be one of the source records, with its label and exact pixels.
    expected = {"train": collections.Counter(), "test": collections.Counter()}
    for name, (labels, pixels) in records.items():
        split = "test" if name == "test_batch.bin" else "train"
        for label, record_pixels in zip(labels, pixels, strict=True):
            expected[split][record_image(record_pixels).tobytes(), int(label)] += 1
    written = {"train": collections.Counter(), "test": collections.Counter()}
    for split in dp.SPLITS:
        for image_raw, label in read_split(prepared.root, split):
            image = Image.open(io.BytesIO(image_raw))
            assert image.format == "PNG"
            pixels = np.asarray(image)
            assert pixels.shape == (32, 32, 3)
            written["test" if split == "test" else "train"][pixels.tobytes(), label] += 1
    assert written["train"] == expected["train"]
    assert written["test"] == expected["test"]


def test_download_reused_on_second_run(http_server, tmp_path):
    served, base_url, requested_paths = http_server
    archive = write_tar(served / "subset.tar.gz", binary_dataset_files()[0])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    url = f"{base_url}/subset.tar.gz"

    first = dp.prepare_dataset(url, tmp_path / "data", expected_md5=md5, seed=1)
    second = dp.prepare_dataset(url, tmp_path / "data", expected_md5=md5, seed=2)

    assert requested_paths == ["/subset.tar.gz"]
    assert first.root != second.root
    assert second.reused is False


def test_official_url_uses_published_md5(http_server, tmp_path, monkeypatch):
    served, base_url, _ = http_server
    archive = write_tar(served / "cifar-10-binary.tar.gz", binary_dataset_files()[0])
    url = f"{base_url}/cifar-10-binary.tar.gz"
    # Pretend the loopback URL is the official one, so no request leaves this machine.
    monkeypatch.setattr(dp, "OFFICIAL_CIFAR10_URL", url)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(url, tmp_path / "data")
    assert dp.OFFICIAL_CIFAR10_MD5 in str(error.value)

    monkeypatch.setattr(dp, "OFFICIAL_CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    prepared = dp.prepare_dataset(url, tmp_path / "data")
    assert prepared.split_counts["test"] == 20


def test_unverified_url_logs_warning(http_server, tmp_path, caplog):
    served, base_url, _ = http_server
    write_tar(served / "subset.tar.gz", binary_dataset_files()[0])
    url = f"{base_url}/subset.tar.gz"

    with caplog.at_level("WARNING", logger=dp.__name__):
        prepared = dp.prepare_dataset(url, tmp_path / "data")

    assert prepared.split_counts["test"] == 20
    assert f"No md5 is known for {url}" in caplog.text


def test_download_md5_mismatch_deletes_file(http_server, tmp_path):
    served, base_url, _ = http_server
    archive = write_tar(served / "subset.tar.gz", binary_dataset_files()[0])
    actual_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    wrong_md5 = "0" * 32
    data_root = tmp_path / "data"

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(f"{base_url}/subset.tar.gz", data_root, expected_md5=wrong_md5)

    message = str(error.value)
    assert wrong_md5 in message
    assert actual_md5 in message
    assert sorted(os.listdir(data_root)) == ["downloads"]
    assert os.listdir(data_root / "downloads") == []


def test_unreachable_url_mentions_source_option(tmp_path):
    # A bound socket that does not listen refuses connections on its port.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/cifar-10-binary.tar.gz"
        with pytest.raises(dp.DataPreparationError) as error:
            dp.prepare_dataset(url, tmp_path / "data", expected_md5="0" * 32)

    message = str(error.value)
    assert url in message
    assert "--source" in message
    assert os.listdir(tmp_path / "data" / "downloads") == []


# --- Archives ----------------------------------------------------------------------------


def _unsafe_member(kind: str, outside: pathlib.Path) -> tuple[tarfile.TarInfo, str]:
    """Return an unsafe tar member of the given kind and the name the error must show."""
    if kind == "parent":
        info = tarfile.TarInfo("../evil")
    elif kind == "absolute":
        info = tarfile.TarInfo(str(outside))
    elif kind == "symlink":
        info = tarfile.TarInfo("cifar-10-batches-bin/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../evil"
    elif kind == "absolute symlink":
        info = tarfile.TarInfo("cifar-10-batches-bin/link")
        info.type = tarfile.SYMTYPE
        info.linkname = str(outside)
    elif kind == "hard link":
        info = tarfile.TarInfo("hard")
        info.type = tarfile.LNKTYPE
        info.linkname = "../evil"
    else:
        info = tarfile.TarInfo("cifar-10-batches-bin/pipe")
        info.type = tarfile.FIFOTYPE
    return info, info.name


@pytest.mark.parametrize(
    "kind", ["parent", "absolute", "symlink", "absolute symlink", "hard link", "fifo"]
)
def test_tar_unsafe_member_rejected(tmp_path, kind):
    outside = tmp_path / "evil"
    archive = tmp_path / "archives" / "unsafe.tar"
    archive.parent.mkdir()
    info, name = _unsafe_member(kind, outside)
    files = binary_dataset_files()[0]
    with tarfile.open(archive, "w") as tar:
        for file_name, data in files.items():
            file_info = tarfile.TarInfo(file_name)
            file_info.size = len(data)
            tar.addfile(file_info, io.BytesIO(data))
        if info.isfile():
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            tar.addfile(info)
    data_root = tmp_path / "data"

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(archive), data_root)

    assert repr(name) in str(error.value)
    assert not outside.exists()
    assert sorted(os.listdir(tmp_path)) == ["archives", "data"]
    assert os.listdir(data_root) == []


@pytest.mark.parametrize("name", ["../evil", "/evil", "train/../../evil"])
def test_zip_unsafe_member_rejected(tmp_path, name):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files[name] = b"evil"
    archive = write_zip(tmp_path / "archives" / "unsafe.zip", files)
    data_root = tmp_path / "data"

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(archive), data_root, eval_fraction=0.5)

    assert repr(name) in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["archives", "data"]
    assert os.listdir(data_root) == []


@pytest.mark.parametrize("file_name", ["notes.txt", "fake.tar.gz", "empty.zip"])
def test_non_archive_file_rejected(tmp_path, file_name):
    path = tmp_path / file_name
    path.write_bytes(b"" if file_name == "empty.zip" else b"this is not an archive\n" * 50)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(path), tmp_path / "data")

    message = str(error.value)
    assert str(path) in message
    assert "not a readable tar" in message
    assert os.listdir(tmp_path / "data") == []


def test_truncated_archive_rejected(tmp_path):
    archive = write_tar(tmp_path / "subset.tar.gz", binary_dataset_files()[0])
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(truncated), tmp_path / "data")

    assert str(truncated) in str(error.value)
    assert os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize("archive_name", ["subset.tar", "subset.tgz", "subset.zip"])
def test_local_binary_archive_formats(tmp_path, archive_name):
    files, records = binary_dataset_files(records_per_file=10)
    path = tmp_path / archive_name
    if archive_name.endswith(".zip"):
        write_zip(path, files)
    else:
        write_tar(path, files, mode="w:gz" if archive_name.endswith(".tgz") else "w")

    prepared = dp.prepare_dataset(str(path), tmp_path / "data", eval_fraction=0.2)

    assert prepared.split_counts == {"train": 40, "eval": 10, "test": 10}
    test_labels = sorted(label for _, label in read_split(prepared.root, "test"))
    assert test_labels == sorted(records["test_batch.bin"][0].tolist())


def test_official_file_name_checked_against_published_md5(tmp_path):
    archive = write_tar(tmp_path / "cifar-10-binary.tar.gz", binary_dataset_files()[0])
    actual_md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(archive), tmp_path / "data")

    assert dp.OFFICIAL_CIFAR10_MD5 in str(error.value)
    assert actual_md5 in str(error.value)
    assert archive.is_file()
    prepared = dp.prepare_dataset(str(archive), tmp_path / "data", expected_md5=actual_md5)
    assert prepared.split_counts["test"] == 20


@pytest.mark.parametrize(
    ("file_name", "data", "expected_text"),
    [
        ("data_batch_3.bin", bytes(2 * 3073 + 5), "not a positive multiple"),
        ("test_batch.bin", bytes([10]) + bytes(3072), "has label 10"),
    ],
)
def test_binary_batch_validated(tmp_path, file_name, data, expected_text):
    files = binary_dataset_files()[0]
    files[f"cifar-10-batches-bin/{file_name}"] = data
    archive = write_tar(tmp_path / "subset.tar.gz", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(archive), tmp_path / "data")

    assert file_name in str(error.value)
    assert expected_text in str(error.value)
    assert os.listdir(tmp_path / "data") == []


def test_binary_archive_missing_batch_rejected(tmp_path):
    files = binary_dataset_files()[0]
    del files["cifar-10-batches-bin/data_batch_4.bin"]
    archive = write_tar(tmp_path / "subset.tar.gz", files)

    with pytest.raises(dp.DataPreparationError, match="data_batch_4.bin"):
        dp.prepare_dataset(str(archive), tmp_path / "data")


def test_binary_folder_source(tmp_path):
    folder = write_folder(tmp_path / "extracted", binary_dataset_files()[0])

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data")

    assert prepared.root.name.startswith("cifar10-binary-")
    assert prepared.split_counts == {"train": 90, "eval": 10, "test": 20}
    assert dp.read_label_names(prepared.root) == CIFAR_CLASSES


# --- Image folders -----------------------------------------------------------------------


def test_image_archive_keeps_jpeg_bytes(tmp_path, cifar_jpeg_files):
    # One wrapping top-level folder around train/ and test/ must be accepted.
    files = {f"cifar10/{name}": data for name, data in cifar_jpeg_files.items()}
    archive = write_tar(tmp_path / "subset.tar.gz", files)

    prepared = dp.prepare_dataset(str(archive), tmp_path / "data", eval_fraction=0.25)

    assert prepared.root.name.startswith("images-")
    assert prepared.label_names == CIFAR_CLASSES
    total_train = len(CIFAR_CLASSES) * IMAGES_PER_CLASS
    assert prepared.split_counts == {"train": 150, "eval": 50, "test": total_train}
    for source_split, output_splits in (("train", ("train", "eval")), ("test", ("test",))):
        expected = collections.Counter(
            (data, CIFAR_CLASSES.index(name.split("/")[1]))
            for name, data in cifar_jpeg_files.items()
            if name.startswith(f"{source_split}/")
        )
        written = collections.Counter(
            example for split in output_splits for example in read_split(prepared.root, split)
        )
        assert written == expected


def test_image_folder_eval_stratified_and_deterministic(tmp_path, cifar_jpeg_files):
    folder = write_folder(tmp_path / "images", cifar_jpeg_files)

    first = dp.prepare_dataset(str(folder), tmp_path / "data-a", eval_fraction=0.25, seed=7)
    second = dp.prepare_dataset(str(folder), tmp_path / "data-b", eval_fraction=0.25, seed=7)

    eval_labels = collections.Counter(label for _, label in read_split(first.root, "eval"))
    assert eval_labels == {label: 5 for label in range(len(CIFAR_CLASSES))}
    assert first.root.name == second.root.name
    first_files = sorted(path.relative_to(first.root) for path in first.root.rglob("*.tfrecord"))
    second_files = sorted(path.relative_to(second.root) for path in second.root.rglob("*.tfrecord"))
    assert first_files == second_files
    for relative in first_files:
        assert (first.root / relative).read_bytes() == (second.root / relative).read_bytes()
    # The examples are shuffled, so the train split is not sorted by label.
    train_labels = [label for _, label in read_split(first.root, "train")]
    assert train_labels != sorted(train_labels)


def test_rerun_reuses_output(tmp_path, cifar_jpeg_files, monkeypatch):
    folder = write_folder(tmp_path / "images", cifar_jpeg_files)
    first = dp.prepare_dataset(str(folder), tmp_path / "data", max_examples_per_split=50)
    mtimes = file_mtimes(first.root)

    def unexpected_writer(*args, **kwargs):
        raise AssertionError("a reused output must not be written again")

    monkeypatch.setattr(tf.io, "TFRecordWriter", unexpected_writer)
    second = dp.prepare_dataset(str(folder), tmp_path / "data", max_examples_per_split=50)

    assert second.reused is True
    assert second.root == first.root
    assert second.split_counts == first.split_counts
    assert second.label_names == first.label_names
    assert file_mtimes(second.root) == mtimes
    assert sorted(os.listdir(tmp_path / "data")) == [first.root.name]


def test_changed_folder_not_reused(tmp_path):
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )
    first = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)
    (folder / "train" / "a" / "4.png").write_bytes(png_bytes((1, 2, 3)))

    second = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    assert second.reused is False
    assert second.root != first.root
    assert second.split_counts["train"] + second.split_counts["eval"] == 9


def test_writer_failure_leaves_no_output(tmp_path, cifar_jpeg_files, monkeypatch):
    folder = write_folder(tmp_path / "images", cifar_jpeg_files)
    real_writer = tf.io.TFRecordWriter
    written = []

    class FailingWriter:
        """Wraps TFRecordWriter and raises on the sixth record."""

        def __init__(self, path, *args, **kwargs):
            self._writer = real_writer(path, *args, **kwargs)

        def write(self, record):
            if len(written) == 5:
                raise RuntimeError("injected write failure")
            written.append(record)
            self._writer.write(record)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._writer.close()

    monkeypatch.setattr(tf.io, "TFRecordWriter", FailingWriter)
    data_root = tmp_path / "data"

    with pytest.raises(RuntimeError, match="injected write failure"):
        dp.prepare_dataset(str(folder), data_root)

    assert len(written) == 5
    assert os.listdir(data_root) == []


def test_stale_temporary_folder_removed(tmp_path):
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )
    data_root = tmp_path / "data"
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = data_root / f".images.tmp-{staging.HOST}-{int(ended.stdout)}-0123abcd"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "train-00000-of-00001.tfrecord").write_bytes(b"partial")
    running = data_root / f".images.tmp-{staging.HOST}-{os.getpid()}-0123abcd"
    running.mkdir()

    dp.prepare_dataset(str(folder), data_root, eval_fraction=0.5)

    assert not stale.exists()
    assert running.is_dir()


def test_class_sets_differ_rejected(tmp_path):
    files = small_image_files({"train": ["bird", "cat", "dog"], "test": ["cat", "dog", "frog"]})
    folder = write_folder(tmp_path / "images", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data")

    message = str(error.value)
    assert "Only in train: ['bird']" in message
    assert "Only in test: ['frog']" in message


def test_empty_class_folder_rejected(tmp_path):
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )
    for path in (folder / "test" / "b").iterdir():
        path.unlink()
    (folder / "test" / "b" / ".DS_Store").write_bytes(b"hidden files are skipped")

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data")

    assert str(folder / "test" / "b") in str(error.value)
    assert "contains no images" in str(error.value)


def test_image_formats_kept_or_converted(tmp_path):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    unchanged_images = {
        "train/a/gif.gif": png_bytes((10, 20, 30), "GIF"),
        "train/a/bmp.bmp": png_bytes((40, 50, 60), "BMP"),
        "train/b/jpeg.jpg": png_bytes((70, 80, 90), "JPEG"),
    }
    tiff = png_bytes((5, 6, 7), "TIFF")
    files.update(unchanged_images)
    files["train/b/tiff.tif"] = tiff
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.2)

    examples = read_split(prepared.root, "train") + read_split(prepared.root, "eval")
    images = [image_raw for image_raw, _ in examples]
    for data in unchanged_images.values():
        assert data in images
    assert tiff not in images
    converted = [
        image_raw
        for image_raw in images
        if np.array_equal(
            np.asarray(Image.open(io.BytesIO(image_raw))), np.full((8, 8, 3), (5, 6, 7))
        )
    ]
    assert len(converted) == 1
    assert Image.open(io.BytesIO(converted[0])).format == "PNG"


def test_unreadable_image_rejected(tmp_path):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["test/a/broken.jpg"] = b"\xff\xd8 not really a JPEG"
    folder = write_folder(tmp_path / "images", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    assert str(folder / "test" / "a" / "broken.jpg") in str(error.value)
    assert "Remove the file" in str(error.value)
    assert os.listdir(tmp_path / "data") == []


def test_truncated_jpeg_rejected_by_path(tmp_path, cifar_jpeg_files):
    # The headers are intact, so only a full decode notices the missing data.
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    real_jpeg = next(data for name, data in cifar_jpeg_files.items() if name.endswith(".jpg"))
    files["train/a/cut.jpg"] = real_jpeg[:-60]
    folder = write_folder(tmp_path / "images", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    assert str(folder / "train" / "a" / "cut.jpg") in str(error.value)
    assert "truncated" in str(error.value)
    assert os.listdir(tmp_path / "data") == []


def test_symlink_inside_tar_read_as_target(tmp_path):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    archive = tmp_path / "linked.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("train/b/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "../a/0.png"
        tar.addfile(link)

    prepared = dp.prepare_dataset(str(archive), tmp_path / "data", eval_fraction=0.2)

    examples = read_split(prepared.root, "train") + read_split(prepared.root, "eval")
    assert examples.count((files["train/a/0.png"], 0)) == 1
    assert examples.count((files["train/a/0.png"], 1)) == 1


def test_max_examples_balanced_across_classes(tmp_path):
    archive = write_tar(tmp_path / "subset.tar.gz", binary_dataset_files()[0])

    prepared = dp.prepare_dataset(
        str(archive), tmp_path / "data", eval_fraction=0.5, max_examples_per_split=35
    )

    assert prepared.split_counts["train"] + prepared.split_counts["eval"] == 35
    assert prepared.split_counts["test"] == 20
    per_class = collections.Counter(
        label for split in ("train", "eval") for _, label in read_split(prepared.root, split)
    )
    assert sorted(per_class.values()) == [3] * 5 + [4] * 5
    eval_per_class = collections.Counter(label for _, label in read_split(prepared.root, "eval"))
    assert set(eval_per_class.values()) == {2}


@pytest.mark.parametrize("eval_fraction", [0, 1, -0.1, 1.5, math.nan])
def test_invalid_eval_fraction_rejected(tmp_path, eval_fraction):
    with pytest.raises(dp.DataPreparationError, match="eval_fraction"):
        dp.prepare_dataset(str(tmp_path), tmp_path / "data", eval_fraction=eval_fraction)


def test_empty_eval_split_rejected(tmp_path):
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )

    with pytest.raises(dp.DataPreparationError, match="eval split would be empty"):
        dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.1)


def test_read_label_names_missing_file(tmp_path):
    with pytest.raises(dp.DataPreparationError, match="label_names.txt"):
        dp.read_label_names(tmp_path)


# --- Image edge cases --------------------------------------------------------------------


def decoded_images(root: pathlib.Path, splits=("train", "eval")) -> list[tuple[bytes, np.ndarray]]:
    """Return (image_raw, pixels) of the splits, decoded as Transform decodes them."""
    examples = [example for split in splits for example in read_split(root, split)]
    return [
        (image_raw, tf.io.decode_image(image_raw, channels=3, expand_animations=False).numpy())
        for image_raw, _ in examples
    ]


def image_with_shape(decoded: list[tuple[bytes, np.ndarray]], shape: tuple) -> np.ndarray:
    [pixels] = [pixels for _, pixels in decoded if pixels.shape == shape]
    return pixels


def png_header_claiming(width: int, height: int) -> bytes:
    """Return a PNG whose header claims width x height pixels, followed by too little data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_16_bit_images_scaled_not_clipped(tmp_path):
    values = np.array([0, 1000, 32896, 65535], dtype=np.uint16)
    gray_buffer = io.BytesIO()
    Image.fromarray(values.reshape(1, 4), mode="I;16").save(gray_buffer, format="PNG")
    tiff_buffer = io.BytesIO()
    Image.fromarray(np.tile(values, (3, 1)).astype(">u2"), mode="I;16B").save(
        tiff_buffer, format="TIFF"
    )
    rgb = np.stack([values, values, values], axis=-1).reshape(2, 2, 3)
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["train/a/gray16.png"] = gray_buffer.getvalue()
    files["train/a/gray16.tif"] = tiff_buffer.getvalue()
    files["train/b/rgb16.png"] = tf.io.encode_png(rgb).numpy()
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.2)

    decoded = decoded_images(prepared.root)
    # 16-bit values scale to their high byte; clipping would turn 1000 into 255.
    expected = [0, 3, 128, 255]
    gray = image_with_shape(decoded, (1, 4, 3))
    assert gray[0, :, 0].tolist() == expected
    tiff = image_with_shape(decoded, (3, 4, 3))
    assert tiff[0, :, 0].tolist() == expected
    assert tiff[:, :, 1].tolist() == tiff[:, :, 0].tolist()
    rgb_decoded = image_with_shape(decoded, (2, 2, 3))
    assert rgb_decoded[:, :, 2].reshape(-1).tolist() == expected


def test_cmyk_jpeg_decoded_as_rgb(tmp_path):
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 6), (0, 128, 255, 0)).save(buffer, format="JPEG", quality=95)
    cmyk = buffer.getvalue()
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["train/a/cmyk.jpg"] = cmyk
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.2)

    decoded = decoded_images(prepared.root)
    # The JPEG bytes are kept: TensorFlow's JPEG decoder converts CMYK to RGB, in Transform
    # and in the serving signature alike.
    assert cmyk in [image_raw for image_raw, _ in decoded]
    pixels = image_with_shape(decoded, (6, 8, 3))
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), [255, 127, 0], atol=3)


def pil_bytes(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_rgba_palette_and_gray_images_decode_as_rgb(tmp_path):
    from components import transform

    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = palette[indices]
    # Every alpha value from 0 to 255 appears, so a decoder that blends alpha into the colors
    # changes most pixels.
    alpha = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) % 256
    rgba = Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), mode="RGBA")
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette(palette.reshape(-1).tolist())
    palette_alpha = bytes(rng.integers(0, 256, 256, dtype=np.uint8))
    gif_palette = np.array([(200, 30, 40), (20, 180, 60), (10, 20, 220)], dtype=np.uint8)
    gif_indices = (np.arange(32)[:, None] // 4 + np.arange(32)[None, :] // 8) % 3
    gif_image = Image.fromarray(gif_indices.astype(np.uint8), mode="P")
    gif_image.putpalette(gif_palette.reshape(-1).tolist())
    gray = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4
    images = {
        "rgba.png": pil_bytes(rgba, "PNG"),
        "palette.png": pil_bytes(palette_image, "PNG"),
        "palette-transparent.png": pil_bytes(palette_image, "PNG", transparency=palette_alpha),
        "palette-transparent.gif": pil_bytes(gif_image, "GIF", transparency=0),
        "gray.jpg": pil_bytes(Image.fromarray(gray, mode="L"), "JPEG", quality=95),
    }
    with Image.open(io.BytesIO(images["palette-transparent.gif"])) as written:
        assert written.mode == "P"
        gif_written_indices = np.asarray(written)
        gif_transparent_index = written.info["transparency"]
        gif_written_palette = np.array(written.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert (gif_written_indices == gif_transparent_index).any()
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files.update({f"train/a/{name}": data for name, data in images.items()})
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.2)

    stored = [image_raw for image_raw, _ in read_split(prepared.root, "train")]
    stored += [image_raw for image_raw, _ in read_split(prepared.root, "eval")]
    for name, data in images.items():
        assert data in stored, f"{name} was not stored unchanged"
    model_inputs = transform.decode_and_resize(tf.constant(list(images.values())), 32).numpy()
    assert model_inputs.shape == (len(images), 32, 32, 3)
    assert np.isfinite(model_inputs).all()
    # decode_and_resize scales to [0, 1], and resizing 32 x 32 to 32 x 32 keeps every pixel.
    pixels = dict(zip(images, np.round(model_inputs * 255).astype(np.uint8), strict=True))
    # TensorFlow's PNG decoder drops alpha, also a palette's tRNS alpha, without blending it.
    np.testing.assert_array_equal(pixels["rgba.png"], rgb)
    np.testing.assert_array_equal(pixels["palette.png"], rgb)
    np.testing.assert_array_equal(pixels["palette-transparent.png"], rgb)
    # TensorFlow's GIF decoder returns black for the transparent index of the first frame.
    gif_expected = gif_written_palette[gif_written_indices]
    gif_expected[gif_written_indices == gif_transparent_index] = 0
    np.testing.assert_array_equal(pixels["palette-transparent.gif"], gif_expected)
    gray_decoded = pixels["gray.jpg"]
    np.testing.assert_array_equal(gray_decoded[..., 1], gray_decoded[..., 0])
    np.testing.assert_array_equal(gray_decoded[..., 2], gray_decoded[..., 0])
    np.testing.assert_allclose(gray_decoded[..., 0], gray, atol=4)


def test_exif_rotation_applied(tmp_path):
    # Red left half and blue right half, 16 x 8, shown rotated 90 degrees clockwise
    # (EXIF orientation 6), so that the upright image is 8 x 16 with red on top.
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0)
    pixels[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    rotated_jpeg = buffer.getvalue()
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["train/a/rotated.jpg"] = rotated_jpeg
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.2)

    decoded = decoded_images(prepared.root)
    [(image_raw, upright)] = [(raw, pixels) for raw, pixels in decoded if pixels.shape[0] == 16]
    assert Image.open(io.BytesIO(image_raw)).format == "PNG"
    with Image.open(io.BytesIO(rotated_jpeg)) as original:
        expected = np.asarray(ImageOps.exif_transpose(original).convert("RGB"))
    np.testing.assert_array_equal(upright, expected)
    np.testing.assert_allclose(upright[:6].reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=8)
    np.testing.assert_allclose(upright[-6:].reshape(-1, 3).mean(axis=0), [0, 0, 255], atol=8)


@pytest.mark.parametrize(
    ("width", "height", "expected_text"),
    [
        # Above MAX_IMAGE_PIXELS but below PIL's own limit: rejected by this module's check.
        (5000, 5000, "is 5000 x 5000 pixels, more than the limit of 16777216 pixels"),
        # Above PIL's limit, which Image.open enforces before the size can be read.
        (20000, 20000, "is larger than the limit of 16777216 pixels"),
    ],
)
def test_decompression_bomb_rejected_before_decoding(tmp_path, width, height, expected_text):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    # The file contains almost no pixel data: decoding it would fail with another error.
    files["train/b/bomb.png"] = png_header_claiming(width, height)
    folder = write_folder(tmp_path / "images", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    message = str(error.value)
    assert str(folder / "train" / "b" / "bomb.png") in message
    assert expected_text in message
    assert "Downscale the image" in message
    assert os.listdir(tmp_path / "data") == []


def test_large_image_kept_and_resized_in_transform(tmp_path):
    from components import transform

    gradient = Image.linear_gradient("L").resize((4000, 3000))
    buffer = io.BytesIO()
    Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180), gradient)).save(
        buffer, format="JPEG", quality=80
    )
    large_jpeg = buffer.getvalue()
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["test/b/large.jpg"] = large_jpeg
    folder = write_folder(tmp_path / "images", files)

    prepared = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    test_images = [image_raw for image_raw, _ in read_split(prepared.root, "test")]
    assert large_jpeg in test_images
    resized = transform.decode_and_resize(tf.constant([large_jpeg]), 32).numpy()
    assert resized.shape == (1, 32, 32, 3)
    # The gradient runs from black at the top to white at the bottom.
    assert resized[0, 0, :, 0].mean() < 0.1
    assert resized[0, -1, :, 0].mean() > 0.9


def test_zero_byte_image_rejected_by_path(tmp_path):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    files["test/a/empty.jpg"] = b""
    folder = write_folder(tmp_path / "images", files)

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    assert str(folder / "test" / "a" / "empty.jpg") in str(error.value)
    assert "is empty (0 bytes)" in str(error.value)
    assert os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_hidden_and_non_image_files_skipped(tmp_path, caplog, container):
    files = small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    skipped = {
        "train/a/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "train/a/._0.png": b"\x00\x05\x16\x07 AppleDouble metadata",
        "train/b/README.txt": b"Images of class b.",
        "test/b/Thumbs.db": b"\xd0\xcf\x11\xe0 thumbnail cache",
    }
    source = tmp_path / "images"
    if container == "zip":
        source = write_zip(tmp_path / "images.zip", {**files, **skipped})
    else:
        write_folder(source, {**files, **skipped})
    caplog.set_level("WARNING", logger=dp.__name__)

    prepared = dp.prepare_dataset(str(source), tmp_path / "data", eval_fraction=0.5)

    assert prepared.split_counts == {"train": 4, "eval": 4, "test": 8}
    written = [image for split in dp.SPLITS for image, _ in read_split(prepared.root, split)]
    assert sorted(written) == sorted(files.values())
    messages = [record.getMessage() for record in caplog.records]
    [message] = [text for text in messages if "Skipping 4 hidden or non-image files" in text]
    for name in ("train/a/.DS_Store", "train/a/._0.png", "train/b/README.txt", "test/b/Thumbs.db"):
        assert repr(name) in message


@pytest.mark.parametrize("container", ["folder", "tar", "zip"])
def test_non_ascii_names_kept(tmp_path, container):
    files = {}
    for split in ("train", "test"):
        for number, color in enumerate(((10, 20, 30), (40, 50, 60))):
            shade = (color[0], color[1], 100 if split == "train" else 200)
            files[f"{split}/chat_é/ñ{number}.png"] = png_bytes(shade)
            files[f"{split}/猫/{number}.jpg"] = png_bytes(shade[::-1], "JPEG")
    if container == "tar":
        source = write_tar(tmp_path / "naïve.tar.gz", files)
    elif container == "zip":
        source = write_zip(tmp_path / "naïve.zip", files)
    else:
        source = write_folder(tmp_path / "données", files)

    prepared = dp.prepare_dataset(str(source), tmp_path / "data", eval_fraction=0.5)

    assert prepared.label_names == ("chat_é", "猫")
    assert dp.read_label_names(prepared.root) == ("chat_é", "猫")
    expected = collections.Counter(
        (data, 0 if "/chat_é/" in name else 1)
        for name, data in files.items()
        if name.startswith("test/")
    )
    assert collections.Counter(read_split(prepared.root, "test")) == expected


@pytest.mark.parametrize(
    ("names", "expected_texts"),
    [
        (["train/a/0.png"], ["has a train/ folder in", "but no test/ folder"]),
        (["Train/a/0.png", "Test/a/0.png"], ["has Test/, Train/ in", "case-sensitive"]),
        (["Train/a/0.png", "test/a/0.png"], ["has Train/ in", "Rename the folders"]),
        (["cifar/Train/a/0.png", "cifar/Test/a/0.png"], ["Test/, Train/ in", "cifar"]),
        (
            ["data/cifar/train/a/0.png", "data/cifar/test/a/0.png"],
            ["at the top or inside one top-level folder", "Top-level entries found: data"],
        ),
    ],
)
def test_unexpected_layout_rejected_naming_folders(tmp_path, names, expected_texts):
    archive = write_tar(tmp_path / "layout.tar.gz", {name: png_bytes((1, 2, 3)) for name in names})

    with pytest.raises(dp.DataPreparationError) as error:
        dp.prepare_dataset(str(archive), tmp_path / "data")

    for text in expected_texts:
        assert text in str(error.value)
    assert os.listdir(tmp_path / "data") == []


# --- Prepared output faults --------------------------------------------------------------


def test_truncated_shard_prepared_again(tmp_path, caplog):
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )
    first = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)
    [shard] = (first.root / "train").iterdir()
    complete = shard.read_bytes()
    shard.write_bytes(complete[: len(complete) // 2])
    caplog.set_level("WARNING", logger=dp.__name__)

    second = dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)

    assert second.reused is False
    assert second.root == first.root
    assert shard.read_bytes() == complete
    assert len(read_split(second.root, "train")) == 4
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"{shard} has {len(complete) // 2} bytes" in text for text in messages)


def write_records(path: pathlib.Path, records: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def example_with_label(label: tf.train.Feature) -> bytes:
    features = {
        "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes((1, 2, 3))])),
        "label": label,
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


@pytest.fixture
def prepared_small(tmp_path) -> dp.PreparedData:
    folder = write_folder(
        tmp_path / "images", small_image_files({"train": ["a", "b"], "test": ["a", "b"]})
    )
    return dp.prepare_dataset(str(folder), tmp_path / "data", eval_fraction=0.5)


def test_verify_accepts_prepared_dataset(prepared_small, capsys):
    counts = dp.verify_prepared_dataset(prepared_small.root)
    exit_code = dp.main(["--verify", str(prepared_small.root)])

    assert counts == prepared_small.split_counts
    assert exit_code == 0
    assert "train=4, eval=4, test=8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("keep_manifest", "expected_text"),
    [
        (True, "but manifest.json records"),
        (False, "is truncated or corrupt: record 7 (counted from 0) cannot be read"),
    ],
)
def test_verify_rejects_truncated_shard(prepared_small, capsys, keep_manifest, expected_text):
    [shard] = (prepared_small.root / "test").iterdir()
    shard.write_bytes(shard.read_bytes()[:-40])
    if not keep_manifest:
        (prepared_small.root / "manifest.json").unlink()

    exit_code = dp.main(["--verify", str(prepared_small.root)])

    error = capsys.readouterr().err
    assert exit_code == 2
    assert str(shard) in error
    assert expected_text in error
    assert "Copy the" in error


@pytest.mark.parametrize(
    ("label", "expected_text"),
    [
        (tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])), "label of type float_list"),
        (tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"1"])), "label of type bytes_list"),
        (tf.train.Feature(int64_list=tf.train.Int64List(value=[2])), "has label 2, but"),
    ],
    ids=["float", "bytes", "outside_labels"],
)
def test_verify_rejects_bad_label(prepared_small, label, expected_text):
    good = example_with_label(tf.train.Feature(int64_list=tf.train.Int64List(value=[1])))
    [shard] = (prepared_small.root / "eval").iterdir()
    write_records(shard, [good, example_with_label(label)])
    (prepared_small.root / "manifest.json").unlink()

    with pytest.raises(dp.DataPreparationError) as error:
        dp.verify_prepared_dataset(prepared_small.root)

    assert f"{shard} record 1 " in str(error.value)
    assert expected_text in str(error.value)


def test_verify_rejects_split_without_examples(prepared_small):
    [shard] = (prepared_small.root / "eval").iterdir()
    write_records(shard, [])
    (prepared_small.root / "manifest.json").unlink()

    with pytest.raises(dp.DataPreparationError) as error:
        dp.verify_prepared_dataset(prepared_small.root)

    assert f"The eval split in {prepared_small.root}/eval/ has no examples" in str(error.value)


# --- Command line ------------------------------------------------------------------------


def test_cli_prepares_folder_source(tmp_path, cifar_jpeg_files):
    folder = write_folder(tmp_path / "images", cifar_jpeg_files)
    command = [
        sys.executable,
        "-m",
        "components.data_preparation",
        "--source",
        str(folder),
        "--data-root",
        str(tmp_path / "data"),
        "--eval-fraction",
        "0.25",
        "--max-examples-per-split",
        "40",
    ]

    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert "Examples per split: train=30, eval=10, test=40" in result.stdout
    assert f"Label names (10): {', '.join(CIFAR_CLASSES)}" in result.stdout
    assert "Reused existing output: no" in result.stdout
    (output,) = (tmp_path / "data").iterdir()
    assert dp.read_label_names(output) == CIFAR_CLASSES


@pytest.mark.parametrize(
    ("arguments", "expected_text"),
    [
        (["--source", "missing-folder"], "was not found"),
        (["--source", ".", "--eval-fraction", "1.5"], "eval_fraction"),
        (["--source", ".", "--md5", "xyz"], "Invalid md5"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, arguments, expected_text):
    exit_code = dp.main([*arguments, "--data-root", str(tmp_path / "data")])

    assert exit_code == 2
    assert expected_text in capsys.readouterr().err
