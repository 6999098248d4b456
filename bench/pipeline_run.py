"""Run local_runner.py once and record what it cost: wall time, peak memory, throughput.

    python bench/pipeline_run.py --output-dir /tmp/bench -- \\
        --source ../shared/datasets/cifar10-images.tar.gz --base-weights none

Everything after `--` goes to local_runner.py unchanged (its --output-dir is
set from this script's). The record lands in <output-dir>/benchmark.json and
as a Markdown section in <output-dir>/benchmark.md, ready for
docs/benchmarks.md. Peak memory is the largest sum of the resident set sizes
of the runner and its child processes, sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from importlib import metadata

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pipeline import config as cfg  # noqa: E402
from pipeline import run_summary  # noqa: E402

PACKAGES = ("tfx", "tensorflow", "keras", "tensorflow-transform", "tensorflow_model_analysis")
SAMPLE_SECONDS = 0.5


class PeakMemory:
    """Samples the resident memory of a process tree in a background thread."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self._process, *self._process.children(recursive=True)]
                total = 0
                for process in processes:
                    # A child may exit between listing and sampling.
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += process.memory_info().rss
                self.peak_bytes = max(self.peak_bytes, total)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(command: list[str], log_path: str) -> tuple[int, float, int]:
    """Run `command` with its output in `log_path`; return (status, wall seconds, peak RSS)."""
    print("Running:", shlex.join(command), f"(log: {log_path})", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        with PeakMemory(process.pid) as memory:
            status = process.wait()
    return status, time.monotonic() - started, memory.peak_bytes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", required=True, help="Folder of the run and its record.")
    parser.add_argument("runner_args", nargs=argparse.REMAINDER, help="-- then local_runner flags")
    args = parser.parse_args()
    runner_args = [value for value in args.runner_args if value != "--"]
    output_dir = os.path.abspath(args.output_dir)
    os.makedirs(output_dir, exist_ok=True)

    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "local_runner.py"),
        "--output-dir",
        output_dir,
        *runner_args,
    ]
    log_path = os.path.join(output_dir, "runner.log")
    status, wall_seconds, peak_bytes = run_measured(command, log_path)
    if status != 0:
        print(f"local_runner.py exited with {status}; see {log_path}", file=sys.stderr)
        return status

    metadata_path = os.path.join(output_dir, "metadata.sqlite")
    summary = run_summary.summarize_run(metadata_path, cfg.PIPELINE_NAME)
    history = {}
    if summary.model_run_uri:
        with open(os.path.join(summary.model_run_uri, "history.json")) as handle:
            history = json.load(handle)

    record = {
        "command": "python local_runner.py " + shlex.join(runner_args),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "versions": {name: metadata.version(name) for name in PACKAGES},
        "wall_seconds": wall_seconds,
        "peak_rss_bytes": peak_bytes,
        "components": {
            component.node_id: {"state": component.state, "seconds": component.seconds}
            for component in summary.components
        },
        "training_history": history,
        "test_accuracy": summary.test_accuracy,
        "per_class_accuracy": summary.per_class_accuracy,
        "blessed": summary.blessed,
        "pushed_path": summary.pushed_path,
    }
    with open(os.path.join(output_dir, "benchmark.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    with open(os.path.join(output_dir, "benchmark.md"), "w") as handle:
        handle.write(render_markdown(record))
    print(render_markdown(record))
    return 0


def machine_line(record: dict) -> str:
    """Return the Markdown line of a record's date, machine and package versions."""
    machine = record["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
    return (
        f"Date {record['date']}; {machine['cores']} cores, {machine['cpu']}; "
        f"Python {machine['python']}; {versions}."
    )


def render_markdown(record: dict) -> str:
    lines = [
        f"Command: `{record['command']}`",
        "",
        machine_line(record),
        "",
        "| component | state | wall time (s) |",
        "| --- | --- | ---: |",
    ]
    for node, values in record["components"].items():
        lines.append(f"| {node} | {values['state']} | {values['seconds']:.1f} |")
    lines += [
        f"| whole command (data preparation included) | | {record['wall_seconds']:.1f} |",
        "",
        "| phase | epoch | training images/s | loss | accuracy | eval loss | eval accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase, values in record["training_history"].items():
        for epoch, speed in enumerate(values.get("images_per_second", [])):
            lines.append(
                f"| {phase} | {epoch + 1} | {speed:.1f} | {values['loss'][epoch]:.4f} | "
                f"{values['accuracy'][epoch]:.4f} | {values['val_loss'][epoch]:.4f} | "
                f"{values['val_accuracy'][epoch]:.4f} |"
            )
    accuracy = record["test_accuracy"]
    lines += [
        "",
        f"- Test accuracy: {accuracy:.4f}" if accuracy is not None else "- Test accuracy: n/a",
        f"- Blessed: {record['blessed']}; pushed to `{record['pushed_path']}`",
        f"- Peak memory (RSS of the runner and its children): "
        f"{record['peak_rss_bytes'] / 2**30:.2f} GiB",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
