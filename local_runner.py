"""Run the whole pipeline on this machine: data preparation, then every TFX component.

    python local_runner.py                       # official CIFAR-10 download, ImageNet weights
    python local_runner.py --source ../shared/datasets/cifar10-images.tar.gz \\
        --base-weights none                      # offline

Everything goes under --output-dir: prepared data (data/), artifacts
(pipeline/), the ML Metadata store (metadata.sqlite), pushed models
(serving/<model name>/<version>/) and cached downloads (downloads/).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time

from pipeline import config as cfg

logger = logging.getLogger("local_runner")


def build_parser() -> argparse.ArgumentParser:
    defaults = cfg.TrainingConfig()
    evaluation = cfg.EvaluationConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--source",
        default=None,
        help="Dataset: an http(s) URL of the official CIFAR-10 binary archive, a local copy "
        "of it, a folder of train/<class>/ and test/<class>/ images, or a .tar/.tar.gz/.zip "
        "of such a folder. Default: the official download.",
    )
    data.add_argument(
        "--md5",
        default=None,
        help="Expected md5 of the source archive (hex). Default: the "
        "published sum when --source is the official URL or its file name.",
    )
    data.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        help="Fraction of each class of `train` held out as the `eval` split for early "
        "stopping (default: %(default)s).",
    )
    data.add_argument(
        "--max-examples-per-split",
        type=int,
        default=None,
        help="Quick runs: at most this many train (before the eval hold-out) and test "
        "examples, balanced across classes. Default: all.",
    )
    data.add_argument(
        "--schema-dir",
        default=cfg.DEFAULT_SCHEMA_DIR,
        help="Folder with the curated schema.pbtxt (default: schemas/ of this repository).",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        default="runs",
        help="Folder for prepared data, artifacts, metadata and pushed models "
        "(default: %(default)s).",
    )
    output.add_argument(
        "--serving-dir",
        default=None,
        help="Serving base folder; models are pushed to <serving-dir>/<model-name>/<version>/ "
        "(default: <output-dir>/serving).",
    )
    output.add_argument(
        "--model-name", default="cifar10", help="Model name under the serving base folder."
    )
    output.add_argument(
        "--no-cache", action="store_true", help="Run every component even if TFX has its result."
    )
    output.add_argument(
        "--verbose", action="store_true", help="Show every log line of TFX, Beam and TF."
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--base-weights",
        default=defaults.base_weights,
        help="Weights of the ResNet50 base model: 'imagenet' (downloaded by Keras), "
        "'blessed' (warm start from this pipeline's last blessed model), 'none' (random "
        "initialisation) or a path to a ResNet50 weights .h5 file without top "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--imagenet-weights-url",
        default=None,
        help="Mirror of Keras' ResNet50 ImageNet weights file, fetched before the run starts.",
    )
    training.add_argument(
        "--head-epochs",
        type=int,
        default=defaults.head_epochs,
        help="Epochs training only the new head on a frozen base (default: %(default)s; "
        "skipped with --base-weights none).",
    )
    training.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=defaults.fine_tune_epochs,
        help="Epochs with the base model unfrozen (default: %(default)s).",
    )
    training.add_argument(
        "--fine-tune-layers",
        type=int,
        default=defaults.fine_tune_layers,
        help="Top layers of the base model unfrozen for fine-tuning, 0 for all "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="Peak learning rate of the head phase and of training from random "
        "initialisation (default: %(default)s).",
    )
    training.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=defaults.fine_tune_learning_rate,
        help="Peak learning rate of fine-tuning pre-trained weights (default: %(default)s).",
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="Images per step (default: %(default)s).",
    )
    training.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="Side in pixels of the square model input; images are resized to it "
        "(default: %(default)s, minimum 32).",
    )
    training.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="Training steps per epoch. Default: one full pass over `train`.",
    )
    training.add_argument(
        "--eval-steps",
        type=int,
        default=None,
        help="Validation steps per epoch. Default: one full pass over `eval`.",
    )
    training.add_argument("--seed", type=int, default=defaults.seed, help="Random seed.")

    evaluation_group = parser.add_argument_group("evaluation")
    evaluation_group.add_argument(
        "--min-accuracy",
        type=float,
        default=evaluation.min_accuracy,
        help="Lowest test accuracy, as a fraction in 0..1, that gets a model blessed "
        "(default: %(default)s).",
    )
    evaluation_group.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=evaluation.max_accuracy_drop,
        help="Largest drop of test accuracy, as a fraction, allowed against the last "
        "blessed model (default: %(default)s).",
    )
    return parser


class ComponentProgress(logging.Filter):
    """Turns TFX's per-component log lines into short start and end lines with timings.

    It also hides the INFO lines of TFX, Beam and TensorFlow unless --verbose,
    since they print whole protos for every component.
    """

    _STARTED = re.compile(r"Component (\S+) is running\.")
    _FINISHED = re.compile(r"Component (\S+) is finished\.")

    def __init__(self, verbose: bool):
        super().__init__()
        self._verbose = verbose
        self._started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        started = self._STARTED.search(message)
        finished = self._FINISHED.search(message)
        if started:
            self._started[started.group(1)] = time.monotonic()
            record.msg, record.args = "%s started", (started.group(1),)
            return True
        if finished:
            node = finished.group(1)
            self.seconds[node] = time.monotonic() - self._started.get(node, time.monotonic())
            record.msg, record.args = "%s finished in %.1f s", (node, self.seconds[node])
            return True
        if self._verbose or record.levelno >= logging.WARNING:
            return True
        return not record.name.startswith(("absl", "apache_beam", "tensorflow", "root"))


def configure_logging(verbose: bool) -> ComponentProgress:
    progress = ComponentProgress(verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    handler.addFilter(progress)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return progress


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)

    # Heavy imports after logging is set, so their first lines are filtered too.
    from absl import logging as absl_logging
    from tfx import v1 as tfx

    from components import data_preparation, model
    from pipeline import pipeline, run_summary

    absl_logging.use_python_logging()
    output_dir = os.path.abspath(args.output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        logger.error("Cannot create the output folder %s: %s", output_dir, error)
        return 2
    if not os.access(output_dir, os.W_OK):
        logger.error("The output folder %s is not writable; pass another --output-dir.", output_dir)
        return 2

    started = time.monotonic()
    try:
        base_weights = args.base_weights
        if base_weights == cfg.BASE_WEIGHTS_IMAGENET:
            # Fetch before any component runs, so a machine without internet
            # fails in seconds rather than after Transform.
            logger.info("Fetching the ImageNet weights of ResNet50.")
            base_weights = model.fetch_imagenet_weights(
                url=args.imagenet_weights_url or model.IMAGENET_WEIGHTS_URL,
                md5=None if args.imagenet_weights_url else model.IMAGENET_WEIGHTS_MD5,
                cache_dir=os.path.join(output_dir, "downloads", "keras"),
            )

        training = cfg.TrainingConfig(
            image_size=args.image_size,
            batch_size=args.batch_size,
            base_weights=base_weights,
            head_epochs=args.head_epochs,
            fine_tune_epochs=args.fine_tune_epochs,
            fine_tune_layers=args.fine_tune_layers,
            learning_rate=args.learning_rate,
            fine_tune_learning_rate=args.fine_tune_learning_rate,
            steps_per_epoch=args.steps_per_epoch,
            eval_steps=args.eval_steps,
            seed=args.seed,
        )
        evaluation = cfg.EvaluationConfig(
            min_accuracy=args.min_accuracy, max_accuracy_drop=args.max_accuracy_drop
        )
        training.validate()
        evaluation.validate()

        logger.info("Preparing data from %s.", args.source or data_preparation.OFFICIAL_CIFAR10_URL)
        prepared = data_preparation.prepare_dataset(
            args.source or data_preparation.OFFICIAL_CIFAR10_URL,
            os.path.join(output_dir, "data"),
            eval_fraction=args.eval_fraction,
            seed=args.seed,
            max_examples_per_split=args.max_examples_per_split,
            expected_md5=args.md5,
        )
        logger.info(
            "Data in %s (%s): %s.",
            prepared.root,
            "reused" if prepared.reused else "written",
            ", ".join(f"{split} {count}" for split, count in prepared.split_counts.items()),
        )

        metadata_path = os.path.join(output_dir, "metadata.sqlite")
        pipeline_config = cfg.PipelineConfig(
            data_root=str(prepared.root),
            pipeline_root=os.path.join(output_dir, "pipeline"),
            serving_base=os.path.abspath(args.serving_dir or os.path.join(output_dir, "serving")),
            metadata_path=metadata_path,
            label_names=prepared.label_names,
            model_name=args.model_name,
            schema_dir=os.path.abspath(args.schema_dir),
            training=training,
            evaluation=evaluation,
            enable_cache=not args.no_cache,
        )
        definition = pipeline.create_pipeline(pipeline_config)
    except (
        cfg.ConfigError,
        data_preparation.DataPreparationError,
        model.BaseWeightsError,
    ) as error:
        logger.error("%s", error)
        return 2

    logger.info("Running pipeline %s with LocalDagRunner.", definition.pipeline_info.pipeline_name)
    failure = None
    try:
        tfx.orchestration.LocalDagRunner().run(definition)
    except Exception as error:  # Any component's error ends the run; report it below.
        failure = error
        logger.error("The pipeline failed: %s: %s", type(error).__name__, error)

    summary = run_summary.summarize_run(metadata_path, pipeline_config.pipeline_name)
    print(run_summary.format_summary(summary, prepared.label_names))
    print(f"Wall time: {time.monotonic() - started:.1f} s")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
