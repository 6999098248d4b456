"""Beam stages with the DirectRunner in multi-processing mode, on 2 worker processes."""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from conftest import LABEL_NAMES, serialized_example
from tfx import v1 as tfx
from tfx.orchestration import pipeline as pipeline_py

from pipeline import config as cfg
from pipeline import pipeline, run_summary

pytestmark = pytest.mark.slow

MULTI_PROCESSING = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


class WorkerCounter:
    """Counts Beam SDK worker processes started under this process while it samples."""

    def __init__(self):
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        me = psutil.Process()
        while not self._stop.wait(0.2):
            for child in me.children(recursive=True):
                try:
                    if "sdk_worker_main" in " ".join(child.cmdline()):
                        self.pids.add(child.pid)
                except psutil.Error:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def run_until_transform(data_root, folder, beam_args) -> str:
    """Run the pipeline up to Transform; return the TransformGraph folder."""
    config = cfg.PipelineConfig(
        data_root=str(data_root),
        pipeline_root=str(folder / "root"),
        serving_base=str(folder / "serving"),
        metadata_path=str(folder / "metadata.sqlite"),
        label_names=LABEL_NAMES,
        training=cfg.TrainingConfig(base_weights="none"),
        beam_pipeline_args=beam_args,
    )
    tfx.orchestration.LocalDagRunner().run(
        pipeline.create_pipeline(config), run_options=pipeline_py.RunOptions(to_nodes=["Transform"])
    )
    summary = run_summary.summarize_run(config.metadata_path, cfg.PIPELINE_NAME)
    states = {component.node_id: component.state for component in summary.components}
    assert states["StatisticsGen"] == "complete"
    assert states["Transform"] == "complete"
    assert "Trainer" not in states
    [graph] = list((folder / "root" / "Transform" / "transform_graph").iterdir())
    return str(graph)


def test_two_beam_workers_give_same_transform(real_images, tmp_path):
    data_root = tmp_path / "data"
    examples = [serialized_example(image, label) for image, label in real_images]
    for split, chosen in (("train", examples), ("eval", examples[:10]), ("test", examples[:10])):
        (data_root / split).mkdir(parents=True)
        with tf.io.TFRecordWriter(str(data_root / split / "data.tfrecord")) as writer:
            for example in chosen:
                writer.write(example)

    with WorkerCounter() as workers:
        parallel_graph = run_until_transform(data_root, tmp_path / "parallel", MULTI_PROCESSING)
    single_graph = run_until_transform(
        data_root, tmp_path / "single", ("--direct_running_mode=in_memory",)
    )

    assert len(workers.pids) >= 2
    images = tf.constant([image for image, _ in real_images[:8]])
    outputs = [
        tft.TFTransformOutput(graph).transform_raw_features({"image_raw": images})["image"]
        for graph in (parallel_graph, single_graph)
    ]
    np.testing.assert_allclose(outputs[0].numpy(), outputs[1].numpy(), atol=1e-5)
