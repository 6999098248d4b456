"""Faults in TFRecord files that ExampleValidator and AnomalyGate must report by split.

Each test writes TFRecord files, computes their statistics with TFDV as StatisticsGen
does, runs TFX's ExampleValidator executor against the curated schema in schemas/, and
reads the result with AnomalyGate's describe_anomalies.
"""

from __future__ import annotations

import pathlib

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from conftest import REPO_ROOT
from tfx.components.example_validator import executor as validator_executor
from tfx.components.example_validator import labels as validator_labels
from tfx.types import standard_component_specs
from tfx.utils import io_utils

from components import anomaly_gate

SCHEMA_PATH = REPO_ROOT / "schemas" / "schema.pbtxt"


def example(label: tf.train.Feature) -> tf.train.Example:
    features = {
        "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG image"])),
        "label": label,
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def int64_label(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def validate_splits(folder: pathlib.Path, splits: dict[str, list[tf.train.Example]]) -> list[str]:
    """Validate each split's TFRecord file against the curated schema; return the gate's lines."""
    schema = io_utils.SchemaReader().read(str(SCHEMA_PATH))
    anomalies_uri = folder / "anomalies"
    for split, examples in splits.items():
        records = folder / "examples" / f"Split-{split}" / "data.tfrecord"
        records.parent.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(records)) as writer:
            for record in examples:
                writer.write(record.SerializeToString())
        statistics = tfdv.generate_statistics_from_tfrecord(str(records))
        output_uri = anomalies_uri / f"Split-{split}"
        output_uri.mkdir(parents=True)
        validator_executor.Executor()._Validate(
            {
                standard_component_specs.STATISTICS_KEY: [statistics],
                standard_component_specs.SCHEMA_KEY: [schema],
                standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY: [None],
            },
            {validator_labels.SCHEMA_DIFF_PATH: [str(output_uri)]},
        )
    return anomaly_gate.describe_anomalies(str(anomalies_uri), list(splits))


def test_valid_splits_have_no_anomalies(tmp_path):
    valid = [example(int64_label(label)) for label in (0, 3, 9)]

    problems = validate_splits(tmp_path, {"train": valid, "eval": valid})

    assert problems == []


def test_split_without_examples_named(tmp_path):
    valid = [example(int64_label(label)) for label in (0, 3, 9)]

    problems = validate_splits(tmp_path, {"train": valid, "eval": []})

    assert len(problems) == 1
    assert problems[0].startswith("eval: dataset: the split has no examples.")
    assert "prepare the data again" in problems[0]


@pytest.mark.parametrize(
    ("label", "type_name"),
    [
        (tf.train.Feature(float_list=tf.train.FloatList(value=[3.0])), "FLOAT"),
        (tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"3"])), "STRING"),
    ],
    ids=["float", "bytes"],
)
def test_label_of_wrong_type_named(tmp_path, label, type_name):
    valid = [example(int64_label(label)) for label in (0, 3, 9)]

    problems = validate_splits(tmp_path, {"train": [example(label)] * 3, "eval": valid})

    assert problems == [f"train: feature 'label': Expected data of type: INT but got {type_name}"]
