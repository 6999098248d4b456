"""The TFX pipeline: CIFAR-10 TFRecords to a blessed ResNet50 for TF Serving.

`create_pipeline()` is the one definition that every runner compiles.
"""

from __future__ import annotations

import os

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components import pusher as atomic_pusher
from components.anomaly_gate import AnomalyGate
from components.report import RunReport
from pipeline import config as cfg

SCHEMA_FILE = "schema.pbtxt"
# Folder under the pipeline root of the Trainer's epoch backups (components/trainer.py).
TRAINER_BACKUPS_FOLDER = "trainer_backups"


def schema_path(schema_dir: str) -> str:
    return os.path.join(schema_dir, SCHEMA_FILE)


def check_schema_matches_labels(schema_dir: str, label_names: tuple[str, ...]) -> None:
    """Raise ConfigError if the schema's label domain does not cover the label names."""
    path = schema_path(schema_dir)
    if not os.path.isfile(path):
        raise cfg.ConfigError(f"Schema file {path} not found; pass --schema-dir.")
    schema = tfdv.load_schema_text(path)
    domain = tfdv.get_feature(schema, cfg.LABEL_KEY).int_domain
    if domain.min != 0 or domain.max != len(label_names) - 1:
        raise cfg.ConfigError(
            f"The schema {path} allows labels {domain.min}..{domain.max}, but the data has "
            f"{len(label_names)} classes ({', '.join(label_names)}). Copy schemas/ and set the "
            f"label int_domain to 0..{len(label_names) - 1}, then pass --schema-dir."
        )


def runtime_path(config: cfg.PipelineConfig, local_path: str) -> str:
    """Return where a file of this checkout is found when the components run."""
    relative = os.path.relpath(os.path.abspath(local_path), cfg.REPO_ROOT)
    if config.code_root == cfg.REPO_ROOT:
        return os.path.abspath(local_path)
    if relative.startswith(os.pardir):
        raise cfg.ConfigError(
            f"{local_path} is outside the repository, so the container image built from it "
            "does not hold the file; copy it into the repository (e.g. schemas/) first."
        )
    return f"{config.code_root.rstrip('/')}/{relative}"


def split_config() -> example_gen_pb2.Input:
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=split, pattern=f"{split}/*")
            for split in (cfg.TRAIN_SPLIT, cfg.EVAL_SPLIT, cfg.TEST_SPLIT)
        ]
    )


def eval_config(evaluation: cfg.EvaluationConfig) -> tfma.EvalConfig:
    """Accuracy on `test`, overall and per class, gated by an absolute and a change threshold."""
    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": evaluation.min_accuracy}),
        # A tiny negative slack absorbs float noise when the model is the same.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -evaluation.max_accuracy_drop - 1e-10},
        ),
    )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_examples",
                label_key=cfg.LABEL_KEY,
                prediction_key="probabilities",
                preprocessing_function_names=[],
            )
        ],
        # The overall slice gates blessing; the slice per label gives per-class accuracy.
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[cfg.LABEL_KEY])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        # Thresholds without a slice would apply to every class
                        # slice too; this one applies to the overall slice only.
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()], threshold=accuracy_threshold
                            )
                        ],
                    ),
                    tfma.MetricConfig(class_name="SparseCategoricalCrossentropy"),
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                ]
            )
        ],
    )


def create_pipeline(config: cfg.PipelineConfig) -> tfx.dsl.Pipeline:
    """Wire the DAG from configuration; runners only choose where it runs."""
    config.validate()
    check_schema_matches_labels(config.schema_dir, config.label_names)
    training = config.training

    # Read the three splits written by data preparation.
    example_gen = tfx.components.ImportExampleGen(
        input_base=config.data_root, input_config=split_config()
    )

    # Statistics of every split, the input of validation and of the report.
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

    # The curated schema, not an inferred one, so bad data cannot widen it.
    schema_gen = tfx.components.ImportSchemaGen(
        schema_file=runtime_path(config, schema_path(config.schema_dir))
    )

    # Compare each split's statistics against the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )

    # Stop here when the validator found anomalies: nothing trains on bad data.
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])

    # Fit normalisation on `train`; the graph also runs inside the Trainer's
    # input pipeline and the serving model, so no transformed copy is written.
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        module_file=runtime_path(config, cfg.TRANSFORM_MODULE_FILE),
        materialize=False,
        splits_config=tfx.proto.SplitsConfig(analyze=[cfg.TRAIN_SPLIT]),
        custom_config={"image_size": training.image_size},
    )
    transform.add_upstream_node(anomaly_gate)

    # The last blessed model: the Evaluator's baseline and, on request, the warm start.
    latest_blessed_model = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    # Transfer learning of ResNet50; `eval` drives early stopping, `test` is not seen.
    trainer_inputs = {}
    if training.base_weights == cfg.BASE_WEIGHTS_BLESSED:
        trainer_inputs["base_model"] = latest_blessed_model.outputs["model"]
    trainer = tfx.components.Trainer(
        module_file=runtime_path(config, cfg.TRAINER_MODULE_FILE),
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[cfg.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[cfg.EVAL_SPLIT]),
        custom_config={
            "training": training.to_custom_config(),
            "label_names": list(config.label_names),
            # Epoch backups that a rerun of an interrupted Trainer resumes from.
            "backup_root": os.path.join(config.pipeline_root, TRAINER_BACKUPS_FOLDER),
        },
        **trainer_inputs,
    )

    # Judge the model on `test` and bless it only if it passes both thresholds.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=latest_blessed_model.outputs["model"],
        example_splits=[cfg.TEST_SPLIT],
        eval_config=eval_config(config.evaluation),
    )

    # Copy a blessed model to <serving_base>/<model_name>/<version>/, unless that
    # model is already there. Local pushes go through a hidden folder and a rename.
    pusher = atomic_pusher.AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(config.serving_base, config.model_name)
            )
        ),
    ).with_id("Pusher")

    # A page per run to judge the model in a minute, built from the artifacts above.
    run_report = RunReport(
        examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"],
        model=trainer.outputs["model"],
        model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"],
        pushed_model=pusher.outputs["pushed_model"],
        label_names=list(config.label_names),
    )

    metadata_config = None
    if config.metadata_path:
        metadata_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path
        )
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            anomaly_gate,
            transform,
            latest_blessed_model,
            trainer,
            evaluator,
            pusher,
            run_report,
        ],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_config,
        beam_pipeline_args=list(config.beam_pipeline_args),
    )
