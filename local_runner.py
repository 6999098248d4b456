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
import dataclasses
import fcntl
import logging
import os
import re
import sys
import time

from pipeline import cli
from pipeline import config as cfg

logger = logging.getLogger("local_runner")

# Lock file inside --output-dir. It contains the PID of the run that last took the lock.
LOCK_FILE_NAME = ".lock"


def build_parser() -> argparse.ArgumentParser:
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
        "--model-name",
        default="cifar10",
        help="Model name: the folder under the serving base (default: %(default)s).",
    )
    output.add_argument(
        "--no-cache", action="store_true", help="Run every component even if TFX has its result."
    )
    output.add_argument(
        "--verbose", action="store_true", help="Show every log line of TFX, Beam and TF."
    )

    cli.add_training_arguments(parser)
    cli.add_evaluation_arguments(parser)
    cli.add_beam_arguments(parser)
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


class OutputFolderLockError(RuntimeError):
    """The output folder's lock file is held by another process or cannot be locked."""


def lock_output_folder(output_dir: str) -> int:
    """Lock <output_dir>/.lock exclusively, write this process's PID into it, return its descriptor.

    The lock is an flock(2) lock: closing the descriptor releases it, and so
    does the end of the process, even by SIGKILL. Raise OutputFolderLockError,
    naming the holder's PID, if another process has the lock.
    """
    path = os.path.join(output_dir, LOCK_FILE_NAME)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputFolderLockError(
            f"Cannot open the lock file {path}: {error}. Remove it if it is not a file, "
            "or pass another --output-dir."
        ) from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise OutputFolderLockError(
            f"Another run (PID {holder}) has locked the output folder {output_dir} "
            f"(lock file {path}). Wait until that run ends, or pass another --output-dir."
        ) from None
    except OSError as error:
        os.close(descriptor)
        raise OutputFolderLockError(
            f"Cannot lock {path}: {error}. Pass an --output-dir on a local file system."
        ) from error
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)

    output_dir = os.path.abspath(args.output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        logger.error(
            "Cannot create the output folder %s: %s. Pass an --output-dir that is a folder "
            "or does not exist yet.",
            output_dir,
            error,
        )
        return 2
    if not os.access(output_dir, os.W_OK):
        logger.error("The output folder %s is not writable; pass another --output-dir.", output_dir)
        return 2

    # One run at a time per output folder, because two LocalDagRunner runs
    # would interleave their writes to one SQLite store and one pipeline root.
    try:
        lock = lock_output_folder(output_dir)
    except OutputFolderLockError as error:
        logger.error("%s", error)
        return 2
    try:
        return run_pipeline(args, output_dir)
    finally:
        os.close(lock)  # Releases the lock.


def run_pipeline(args: argparse.Namespace, output_dir: str) -> int:
    """Check the flags, prepare the data and run the pipeline; return the exit status."""
    # Heavy imports after logging is set, so their first lines are filtered too.
    from absl import logging as absl_logging
    from tfx import v1 as tfx

    from components import data_preparation, model
    from pipeline import baseline, pipeline, run_summary

    absl_logging.use_python_logging()
    started = time.monotonic()
    try:
        # Every flag is checked before anything touches the network or writes data.
        cfg.validate_model_name(args.model_name)
        training = cli.training_config(args, args.base_weights)
        evaluation = cli.evaluation_config(args)
        beam_args = cli.beam_pipeline_args(args)

        serving_base = os.path.abspath(args.serving_dir or os.path.join(output_dir, "serving"))
        try:
            os.makedirs(serving_base, exist_ok=True)
        except OSError as error:
            raise cfg.ConfigError(
                f"Cannot create the serving folder {serving_base}: {error}. "
                "Pass another --serving-dir."
            ) from error

        if training.base_weights not in cfg.BASE_WEIGHTS_KEYWORDS:
            logger.info("Checking the weights file %s.", training.base_weights)
            model.check_weights_file(training.base_weights, training.image_size)
        if training.base_weights == cfg.BASE_WEIGHTS_IMAGENET:
            # Fetch before any component runs, so a machine without internet
            # fails in seconds rather than after Transform. The Trainer then
            # loads the downloaded file.
            logger.info("Fetching the ImageNet weights of ResNet50.")
            weights_file = model.fetch_imagenet_weights(
                url=training.imagenet_weights_url,
                cache_dir=os.path.join(output_dir, "downloads", "keras"),
            )
            training = dataclasses.replace(training, base_weights=weights_file)

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
            serving_base=serving_base,
            metadata_path=metadata_path,
            label_names=prepared.label_names,
            model_name=args.model_name,
            schema_dir=os.path.abspath(args.schema_dir),
            training=training,
            evaluation=evaluation,
            beam_pipeline_args=beam_args,
            enable_cache=not args.no_cache,
        )
        definition = pipeline.create_pipeline(pipeline_config)
        baseline.check_baseline_label_names(
            metadata_path, pipeline_config.pipeline_name, prepared.label_names
        )
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
