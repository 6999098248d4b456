"""Compile the pipeline for Kubeflow Pipelines (KFP v2), and optionally submit a run.

    python kubeflow_runner.py --image REGISTRY/cifar10-tfx:TAG \\
        --pipeline-root gs://BUCKET/pipeline --data-root gs://BUCKET/cifar10-data \\
        --serving-dir gs://BUCKET/serving --output cifar10_pipeline.json

The pipeline is the one `create_pipeline()` builds for local runs. Its
components run in the container image built from this repository's
Dockerfile, which holds the package under --code-root, so module files and the
schema are referenced there rather than in this checkout. Prepare the data
first (`python -m components.data_preparation`) and copy the folder to
--data-root. Without --endpoint nothing touches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

from pipeline import cli
from pipeline import config as cfg

logger = logging.getLogger("kubeflow_runner")

# WORKDIR of the Dockerfile: the folder of this repository inside the image.
DEFAULT_CODE_ROOT = "/pipeline"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    kubeflow = parser.add_argument_group("kubeflow")
    kubeflow.add_argument(
        "--image", required=True, help="Container image of the components, built from Dockerfile."
    )
    kubeflow.add_argument(
        "--pipeline-root",
        required=True,
        help="Root of the run's artifacts, e.g. gs://bucket/pipeline or s3://bucket/pipeline.",
    )
    kubeflow.add_argument(
        "--data-root",
        required=True,
        help="Folder written by data preparation (train/, eval/, test/), as the cluster sees it.",
    )
    kubeflow.add_argument(
        "--serving-dir",
        required=True,
        help="Serving base folder; models are pushed to <serving-dir>/<model-name>/<version>/.",
    )
    kubeflow.add_argument(
        "--label-names",
        default=",".join(cfg.CIFAR10_LABEL_NAMES),
        help="Comma-separated class names in label order, or @FILE for a label_names.txt "
        "(default: the CIFAR-10 classes).",
    )
    kubeflow.add_argument(
        "--code-root",
        default=DEFAULT_CODE_ROOT,
        help="Folder of this repository inside the image (default: %(default)s).",
    )
    kubeflow.add_argument(
        "--schema-dir",
        default=cfg.DEFAULT_SCHEMA_DIR,
        help="Folder with the curated schema.pbtxt, inside this repository so the image "
        "holds it (default: schemas/).",
    )
    kubeflow.add_argument(
        "--model-name",
        default="cifar10",
        help="Model name: the folder under the serving base (default: %(default)s).",
    )
    kubeflow.add_argument(
        "--output",
        default="cifar10_pipeline.json",
        help="Compiled KFP v2 pipeline file, .json or .yaml (default: %(default)s).",
    )
    kubeflow.add_argument(
        "--no-cache", action="store_true", help="Disable TFX caching in the compiled pipeline."
    )

    submit = parser.add_argument_group("submit (optional)")
    submit.add_argument(
        "--endpoint",
        default=None,
        help="KFP API server, e.g. http://localhost:8080; when given, a run of the compiled "
        "pipeline is created there.",
    )
    submit.add_argument("--experiment", default="cifar10", help="KFP experiment of the run.")
    submit.add_argument("--run-name", default=None, help="Name of the run (default: KFP's).")

    cli.add_training_arguments(parser)
    cli.add_evaluation_arguments(parser)
    cli.add_beam_arguments(parser)
    return parser


def parse_label_names(value: str) -> tuple[str, ...]:
    """Read label names from 'a,b,c' or '@path/to/label_names.txt'."""
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as handle:
                names = [line.strip() for line in handle if line.strip()]
        except OSError as error:
            raise cfg.ConfigError(f"Cannot read label names from {path}: {error}.") from error
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise cfg.ConfigError(f"--label-names {value!r} repeats a class name.")
    return tuple(names)


@contextlib.contextmanager
def user_modules_from_image() -> Iterator[None]:
    """Make TFX reference module files by path instead of packaging them as wheels.

    TFX otherwise builds a wheel of components/ at compile time and uploads it
    under the pipeline root, which needs write access to that bucket. The
    image already contains the code, and this is TFX's own switch for that.
    """
    name = "UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def compile_pipeline(args: argparse.Namespace) -> str:
    """Compile the KFP v2 pipeline file; return its path."""
    from tfx import v1 as tfx

    from pipeline import pipeline

    training = cli.training_config(args, args.base_weights)
    if training.base_weights not in cfg.BASE_WEIGHTS_KEYWORDS:
        raise cfg.ConfigError(
            f"--base-weights {training.base_weights!r}: a local weights file is not visible to "
            "the cluster; use imagenet, blessed or none, or bake the file into the image."
        )
    config = cfg.PipelineConfig(
        data_root=args.data_root,
        pipeline_root=args.pipeline_root,
        serving_base=args.serving_dir,
        metadata_path=None,
        label_names=parse_label_names(args.label_names),
        model_name=args.model_name,
        schema_dir=os.path.abspath(args.schema_dir),
        code_root=args.code_root,
        training=training,
        evaluation=cli.evaluation_config(args),
        beam_pipeline_args=cli.beam_pipeline_args(args),
        enable_cache=not args.no_cache,
    )
    with user_modules_from_image():
        definition = pipeline.create_pipeline(config)

    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image)
    )
    job = runner.run(definition, write_out=False)

    # Written through a temporary file, so a failed compile never leaves half a spec.
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".pipeline-", dir=os.path.dirname(output))
    try:
        with os.fdopen(handle, "w") as stream:
            if output.endswith((".yaml", ".yml")):
                import yaml

                yaml.safe_dump(job, stream, sort_keys=True)
            else:
                json.dump(job, stream, indent=2, sort_keys=True)
        # mkstemp creates the file readable by its owner only.
        os.chmod(staging, 0o644)
        os.replace(staging, output)
    except BaseException:
        os.unlink(staging)
        raise
    return output


def submit_run(spec_path: str, endpoint: str, experiment: str, run_name: str | None) -> str:
    """Create a run of the compiled pipeline on a KFP API server; return the run id.

    The compiled file is a PipelineJob (spec plus runtime configuration); kfp's
    client takes the bare PipelineSpec as YAML and the pipeline root apart.
    """
    import kfp
    import yaml

    with open(spec_path, encoding="utf-8") as handle:
        job = yaml.safe_load(handle)  # JSON is valid YAML.
    pipeline_root = job.get("runtimeConfig", {}).get("gcsOutputDirectory")
    with tempfile.TemporaryDirectory() as folder:
        package = os.path.join(folder, "pipeline_spec.yaml")
        with open(package, "w", encoding="utf-8") as handle:
            yaml.safe_dump(job["pipelineSpec"], handle, sort_keys=True)
        client = kfp.Client(host=endpoint)
        result = client.create_run_from_pipeline_package(
            package,
            arguments={},
            run_name=run_name,
            experiment_name=experiment,
            pipeline_root=pipeline_root,
        )
    return result.run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s")
    try:
        spec_path = compile_pipeline(args)
    except cfg.ConfigError as error:
        logger.error("%s", error)
        return 2
    logger.info("Compiled the pipeline for KFP v2 to %s (image %s).", spec_path, args.image)

    if args.endpoint:
        logger.info("Submitting a run to %s.", args.endpoint)
        try:
            run_id = submit_run(spec_path, args.endpoint, args.experiment, args.run_name)
        except Exception as error:  # kfp raises urllib3, HTTP and API errors alike.
            logger.error("Submitting to %s failed: %s", args.endpoint, error)
            return 1
        logger.info("Created run %s on %s.", run_id, args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
