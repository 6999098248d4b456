"""Run the plain Keras baseline and the pipeline in turn, then report ratios.

    python bench/compare.py --output-dir /tmp/compare --quick   # a few minutes
    python bench/compare.py --output-dir /tmp/compare           # all 60,000 images

Both sides get the same images (../shared/datasets/cifar10-images.tar.gz by
default), image size, batch size and epochs, and run one after the other on
this machine, so their ratios hold even where absolute times drift:

1. bench/keras_baseline.py: NumPy arrays, /255, model.fit and model.evaluate;
2. local_runner.py from random initialisation (--base-weights none), with
   every component, the RunReport included;
3. bench/serving_latency.py on the version the pipeline pushed.

--quick caps each split at 500 images per class (4,500 train, 500 validation,
5,000 test) and trains 2 epochs. The results land in <output-dir>/comparison.json
and <output-dir>/comparison.md, a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
from importlib import metadata

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, BENCH_DIR)

from pipeline_run import PACKAGES, cpu_model, machine_line, run_measured  # noqa: E402

from pipeline import config as cfg  # noqa: E402
from pipeline import run_summary  # noqa: E402

DEFAULT_SOURCE = os.path.join(
    os.path.dirname(REPO_ROOT), "shared", "datasets", "cifar10-images.tar.gz"
)
QUICK_PER_CLASS = 500
QUICK_EPOCHS = 2
FULL_EPOCHS = 5
EVAL_FRACTION = 0.1
MODEL_NAME = "cifar10"
GIB = 2**30

# The targets of the benchmark issue: (key, description, bound, "max" or "min").
TARGETS = (
    ("wall_ratio", "pipeline wall / baseline wall", 1.0, "max"),
    ("training_speed_ratio", "Trainer images/s / baseline fit images/s (median epoch)", 1.3, "min"),
    ("evaluation_ratio", "Evaluator wall / model.evaluate wall", 1.5, "max"),
    ("serving_p50_ratio", "serving p50 / bare model p50 (one image)", 1.2, "max"),
    ("pipeline_peak_gib", "pipeline peak RSS (GiB)", 4.0, "max"),
    ("pipeline_test_accuracy", "pipeline test accuracy after 5 epochs", 0.60, "min"),
)


def run_checked(command: list[str], log_path: str) -> tuple[float, int]:
    """Run `command` (pipeline_run.run_measured); return (wall seconds, peak RSS bytes)."""
    status, wall, peak = run_measured(command, log_path)
    if status != 0:
        raise SystemExit(f"{command[1]} exited with {status}; see {log_path}")
    print(f"  done in {wall:.1f} s, peak {peak / GIB:.2f} GiB", flush=True)
    return wall, peak


def run_baseline(args: argparse.Namespace, folder: str) -> dict:
    command = [
        sys.executable,
        os.path.join(BENCH_DIR, "keras_baseline.py"),
        "--source",
        args.source,
        "--output-dir",
        folder,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--validation-fraction",
        str(EVAL_FRACTION),
    ]
    if args.quick:
        command += ["--max-per-class", str(QUICK_PER_CLASS)]
    wall, peak = run_checked(command, os.path.join(folder, "baseline.log"))
    with open(os.path.join(folder, "baseline.json")) as handle:
        record = json.load(handle)
    record.update(process_wall_seconds=wall, peak_rss_bytes=peak)
    return record


def run_pipeline(args: argparse.Namespace, folder: str) -> dict:
    runner_args = [
        "--source",
        args.source,
        "--base-weights",
        "none",
        "--fine-tune-epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--eval-fraction",
        str(EVAL_FRACTION),
        # The comparison wants a pushed model whatever its accuracy.
        "--min-accuracy",
        "0",
        "--model-name",
        MODEL_NAME,
    ]
    if args.quick:
        runner_args += ["--max-examples-per-split", str(QUICK_PER_CLASS * 10)]
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "local_runner.py"),
        "--output-dir",
        folder,
        "--serving-dir",
        os.path.join(folder, "serving"),
        *runner_args,
    ]
    wall, peak = run_checked(command, os.path.join(folder, "runner.log"))
    summary = run_summary.summarize_run(os.path.join(folder, "metadata.sqlite"), cfg.PIPELINE_NAME)
    with open(os.path.join(summary.model_run_uri, "history.json")) as handle:
        history = json.load(handle)["fine_tune"]
    return {
        "command": "python local_runner.py " + shlex.join(runner_args),
        "wall_seconds": wall,
        "peak_rss_bytes": peak,
        "components": {c.node_id: c.seconds for c in summary.components},
        "history": history,
        "test_accuracy": summary.test_accuracy,
        "pushed_path": summary.pushed_path,
    }


def run_serving(args: argparse.Namespace, folder: str, model_dir: str) -> dict:
    output = os.path.join(folder, "latency.json")
    command = [
        sys.executable,
        os.path.join(BENCH_DIR, "serving_latency.py"),
        "--model-dir",
        model_dir,
        "--source",
        args.source,
        "--image-size",
        str(args.image_size),
        "--output",
        output,
    ]
    run_checked(command, os.path.join(folder, "latency.log"))
    with open(output) as handle:
        return json.load(handle)


def ratios(baseline: dict, pipeline: dict, serving: dict, epochs: int) -> dict[str, float | None]:
    accuracy = pipeline["test_accuracy"]
    return {
        "wall_ratio": pipeline["wall_seconds"] / baseline["process_wall_seconds"],
        # The median epoch: robust to the first epoch's tracing and to one epoch
        # slowed by another process.
        "training_speed_ratio": statistics.median(pipeline["history"]["images_per_second"])
        / statistics.median(baseline["training_images_per_second"]),
        "evaluation_ratio": pipeline["components"]["Evaluator"] / baseline["evaluate_seconds"],
        "serving_p50_ratio": serving["signature"]["p50_ms"] / serving["bare_model"]["p50_ms"],
        "pipeline_peak_gib": pipeline["peak_rss_bytes"] / GIB,
        # The accuracy target is defined for 5 epochs only.
        "pipeline_test_accuracy": accuracy if epochs == FULL_EPOCHS else None,
    }


def verdicts(values: dict[str, float | None]) -> list[dict]:
    rows = []
    for key, description, bound, kind in TARGETS:
        value = values[key]
        if value is None:
            met = None
        elif kind == "max":
            met = value <= bound
        else:
            met = value >= bound
        rows.append(
            {"key": key, "description": description, "bound": bound, "kind": kind, "value": value}
            | {"met": met}
        )
    return rows


def render_markdown(record: dict) -> str:
    baseline, pipeline, serving = record["baseline"], record["pipeline"], record["serving"]
    mode = "quick" if record["quick"] else "full"
    lines = [
        f"Command: `{record['command']}` ({mode} mode, {record['epochs']} epochs, "
        f"batch {record['batch_size']}, {record['image_size']}×{record['image_size']} pixels; "
        f"{baseline['train_examples']:,} train, {baseline['validation_examples']:,} validation, "
        f"{baseline['test_examples']:,} test images)",
        "",
        machine_line(record),
        "",
        "| target | measured | bound | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in record["targets"]:
        value = "n/a" if row["value"] is None else f"{row['value']:.2f}"
        bound = ("≤ " if row["kind"] == "max" else "≥ ") + f"{row['bound']:.2f}"
        met = {True: "yes", False: "**no**", None: "not measured (needs 5 epochs)"}[row["met"]]
        lines.append(f"| {row['description']} | {value} | {bound} | {met} |")

    baseline_speed = statistics.median(baseline["training_images_per_second"])
    pipeline_speed = statistics.median(pipeline["history"]["images_per_second"])
    lines += [
        "",
        "| measure | baseline | pipeline | pipeline / baseline |",
        "| --- | ---: | ---: | ---: |",
        _row("whole run, wall (s)", baseline["process_wall_seconds"], pipeline["wall_seconds"]),
        _row("training images/s (median epoch)", baseline_speed, pipeline_speed),
        _row(
            "test-split evaluation, wall (s)",
            baseline["evaluate_seconds"],
            pipeline["components"]["Evaluator"],
        ),
        _row("peak RSS (GiB)", baseline["peak_rss_bytes"] / GIB, pipeline["peak_rss_bytes"] / GIB),
        _row("test accuracy", baseline["test_accuracy"], pipeline["test_accuracy"] or 0.0, 4),
        "",
        "Serving, same weights (bench/serving_latency.py):",
        "",
        "| measure | bare Keras model | serving signature | signature / bare |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("p50_ms", "one image, p50 (ms)"),
        ("p99_ms", "one image, p99 (ms)"),
        ("batch_images_per_second", "batch of 64, images/s"),
    ):
        lines.append(_row(label, serving["bare_model"][key], serving["signature"][key]))

    lines += [
        "",
        "Validation accuracy per epoch (baseline: its 10 % hold-out; pipeline: `eval`):",
        "",
        "| epoch | baseline images/s | baseline val. accuracy | pipeline images/s "
        "| pipeline eval accuracy |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for epoch in range(record["epochs"]):
        lines.append(
            f"| {epoch + 1} | {_at(baseline['training_images_per_second'], epoch, 1)} "
            f"| {_at(baseline['history']['val_accuracy'], epoch, 4)} "
            f"| {_at(pipeline['history']['images_per_second'], epoch, 1)} "
            f"| {_at(pipeline['history']['val_accuracy'], epoch, 4)} |"
        )
    lines += ["", "Pipeline components, wall (s):", "", "| component | s |", "| --- | ---: |"]
    lines += [f"| {node} | {seconds:.1f} |" for node, seconds in pipeline["components"].items()]
    return "\n".join(lines) + "\n"


def _row(label: str, baseline: float, pipeline: float, digits: int = 1) -> str:
    ratio = pipeline / baseline if baseline else float("nan")
    return f"| {label} | {baseline:.{digits}f} | {pipeline:.{digits}f} | {ratio:.2f} |"


def _at(values: list[float], index: int, digits: int) -> str:
    # Early stopping can end a run before its last epoch.
    return f"{values[index]:.{digits}f}" if index < len(values) else "stopped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", help="Folder of both runs and results (required).")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="Image archive or folder.")
    parser.add_argument("--quick", action="store_true", help="A subset and 2 epochs.")
    parser.add_argument("--epochs", type=int, default=None, help="Default: 5, or 2 with --quick.")
    parser.add_argument("--batch-size", type=int, default=cfg.TrainingConfig.batch_size)
    parser.add_argument("--image-size", type=int, default=cfg.TrainingConfig.image_size)
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="Only render an earlier comparison.json again (targets and Markdown) and exit.",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as handle:
            record = json.load(handle)
        record["targets"] = verdicts(
            ratios(record["baseline"], record["pipeline"], record["serving"], record["epochs"])
        )
        print(render_markdown(record))
        return 0
    if not args.output_dir:
        parser.error("--output-dir is required, e.g. --output-dir /tmp/compare.")
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else FULL_EPOCHS
    if not os.path.exists(args.source):
        parser.error(f"--source {args.source} does not exist; pass the CIFAR-10 image archive.")
    output_dir = os.path.abspath(args.output_dir)
    folders = {name: os.path.join(output_dir, name) for name in ("baseline", "pipeline")}
    for folder in folders.values():
        if os.path.exists(os.path.join(folder, "metadata.sqlite")) or os.path.exists(
            os.path.join(folder, "baseline.json")
        ):
            parser.error(f"{folder} holds an earlier run; pass a new --output-dir.")
        os.makedirs(folder, exist_ok=True)

    baseline = run_baseline(args, folders["baseline"])
    pipeline = run_pipeline(args, folders["pipeline"])
    serving = run_serving(args, output_dir, pipeline["pushed_path"])

    record = {
        "command": "python bench/compare.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "versions": {name: metadata.version(name) for name in PACKAGES},
        "baseline": baseline,
        "pipeline": pipeline,
        "serving": serving,
    }
    record["targets"] = verdicts(ratios(baseline, pipeline, serving, args.epochs))
    with open(os.path.join(output_dir, "comparison.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    markdown = render_markdown(record)
    with open(os.path.join(output_dir, "comparison.md"), "w") as handle:
        handle.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
