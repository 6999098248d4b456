"""One worker of a MultiWorkerMirroredStrategy job: runs the Trainer's run_fn.

Started twice by test_distributed_training.py, each time with its own TF_CONFIG,
and given its settings as a JSON file path on the command line.
"""

from __future__ import annotations

import json
import sys

from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import tf_example_record

from components import trainer


def dataset_factory(file_pattern, options, schema):
    """The DataAccessor factory TFX builds for uncompressed tf.Example files."""
    source = tf_example_record.TFExampleRecord(
        file_pattern=file_pattern, schema=schema, telemetry_descriptors=["test"]
    )
    return source.TensorFlowDataset(options)


def main(settings_path: str) -> None:
    with open(settings_path) as handle:
        settings = json.load(handle)
    trainer.run_fn(
        FnArgs(
            train_files=[settings["train_files"]],
            eval_files=[settings["eval_files"]],
            transform_output=settings["transform_output"],
            transform_graph_path=settings["transform_output"],
            serving_model_dir=settings["serving_model_dir"],
            model_run_dir=settings["model_run_dir"],
            data_accessor=DataAccessor(
                tf_dataset_factory=dataset_factory,
                record_batch_factory=None,
                data_view_decode_fn=None,
            ),
            custom_config=settings["custom_config"],
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
