"""The Trainer's run_fn under MultiWorkerMirroredStrategy: two worker processes on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import LABEL_NAMES, REPO_ROOT, analyze_transform, serialized_example

from pipeline import config as cfg

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for item in sockets:
            item.bind(("127.0.0.1", 0))
        return [item.getsockname()[1] for item in sockets]
    finally:
        for item in sockets:
            item.close()


def write_records(path, examples: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)


def test_two_workers_train_and_only_chief_exports(real_images, tmp_path):
    images, labels = zip(*real_images, strict=True)
    examples = [serialized_example(image, label) for image, label in real_images]
    write_records(tmp_path / "train" / "data.tfrecord", examples)
    write_records(tmp_path / "eval" / "data.tfrecord", examples[:16])
    transform_dir = str(tmp_path / "transform")
    analyze_transform(list(images), list(labels), transform_dir)

    training = cfg.TrainingConfig(
        base_weights="none",
        fine_tune_epochs=1,
        steps_per_epoch=2,
        eval_steps=1,
        batch_size=8,
        distribution_strategy="multi_worker_mirrored",
    )
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        worker_dir = tmp_path / f"worker{index}"
        worker_dir.mkdir()
        settings = {
            "train_files": str(tmp_path / "train" / "*"),
            "eval_files": str(tmp_path / "eval" / "*"),
            "transform_output": transform_dir,
            "serving_model_dir": str(worker_dir / "serving"),
            "model_run_dir": str(worker_dir / "model_run"),
            "custom_config": {
                "training": training.to_custom_config(),
                "label_names": list(LABEL_NAMES),
            },
        }
        settings_path = worker_dir / "settings.json"
        settings_path.write_text(json.dumps(settings))
        environment = dict(os.environ)
        environment["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
        environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO_ROOT / "tests" / "distributed_worker.py"),
                    str(settings_path),
                ],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            process.kill()

    for index, process in enumerate(processes):
        assert process.returncode == 0, f"worker {index} failed:\n{outputs[index][-12000:]}"
    assert "MultiWorkerMirroredStrategy" in outputs[0] or "CollectiveAllReduce" in outputs[0]
    chief_serving = tmp_path / "worker0" / "serving"
    assert (chief_serving / "saved_model.pb").is_file()
    assert (tmp_path / "worker0" / "model_run" / "history.json").is_file()
    assert not (tmp_path / "worker1" / "serving" / "saved_model.pb").exists()
    assert not (tmp_path / "worker1" / "model_run" / "history.json").exists()
    assert "Worker finished" in outputs[1]

    served = tf.saved_model.load(str(chief_serving)).signatures["serving_default"]
    probabilities = served(image_bytes=tf.constant([images[0]]))["probabilities"].numpy()
    assert probabilities.shape == (1, len(LABEL_NAMES))
