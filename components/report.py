"""RunReport: a page per run to judge the model in a minute, recorded in ML Metadata.

The component reads only the run's own artifacts. The Trainer's history.json
gives loss and accuracy per epoch of both phases. A pass of the model's
serving_examples signature over the test split gives the confusion matrix,
per-class precision and recall, and the misclassified images. The statistics
and examples give the size and label counts of each split, the Evaluator gives
metrics, thresholds and the blessing, and the Pusher gives the model's
destination. The report goes into the RunReport artifact as report.html (one
self-contained file with embedded images) and report.md with its PNG files.

`build_report()` does all the work and takes plain TFX artifacts, so
tools/make_report.py rebuilds the report of a finished run from ML Metadata.
"""

import dataclasses
import datetime
import logging
import math

from tfx import v1 as tfx
from tfx.types.artifact import Artifact

from components import report_plots
from components.report_data import (
    EvaluationData,
    PhaseHistory,
    PushData,
    ReportInputs,
    SplitData,
    TestPredictions,
    predict_test_split,
    read_evaluation,
    read_history,
    read_push,
    read_split_data,
)
from components.report_plots import class_name
from components.report_render import (
    HTML_FILE,
    Block,
    BulletList,
    Heading,
    Paragraph,
    Picture,
    Table,
    write_report,
)
from components.trainer import HISTORY_FILE
from pipeline import config as cfg
from pipeline import run_summary

logger = logging.getLogger(__name__)

REPORT_TITLE = "Pipeline run report"
# Section headings, in the order the report shows them.
SECTION_VERDICT = "Verdict"
SECTION_BLESSING = "Blessing"
SECTION_TEST = "Test accuracy and confusion matrix"
SECTION_PER_CLASS = "Per-class metrics"
SECTION_MISCLASSIFIED = "Misclassified test images"
SECTION_TRAINING = "Training"
SECTION_DATA = "Data"
SECTION_PUSH = "Push"
SECTION_SOURCES = "Sources"
SECTIONS = (
    SECTION_VERDICT,
    SECTION_BLESSING,
    SECTION_TEST,
    SECTION_PER_CLASS,
    SECTION_MISCLASSIFIED,
    SECTION_TRAINING,
    SECTION_DATA,
    SECTION_PUSH,
    SECTION_SOURCES,
)
# Largest difference between this report's test accuracy and TFMA's that
# still counts as agreement; both divide integer counts, so only float
# rounding separates them.
ACCURACY_TOLERANCE = 1e-6


class RunReportArtifact(Artifact):
    """A run report: report.html (self-contained), report.md and the PNG files it links."""

    # KubeflowV2DagRunner accepts custom type names only in the form
    # "namespace.TypeName" (TFX 1.16's compiler_utils checks the pattern).
    TYPE_NAME = run_summary.REPORT_TYPE_NAME


@dataclasses.dataclass
class ReportResult:
    html_path: str
    # None when the run has no model or no examples to test it on.
    predictions: TestPredictions | None


@dataclasses.dataclass
class _Content:
    """Everything read from the artifacts; None where an artifact is missing."""

    inputs: ReportInputs
    phases: list[PhaseHistory] | None
    splits: list[SplitData] | None
    predictions: TestPredictions | None
    evaluation: EvaluationData | None
    push: PushData | None


def build_report(inputs: ReportInputs, output_dir: str) -> ReportResult:
    """Read the run's artifacts, draw the figures and write the report into `output_dir`."""
    content = _Content(
        inputs=inputs,
        phases=read_history(inputs.model_run) if inputs.model_run else None,
        splits=read_split_data(inputs.examples, inputs.statistics) if inputs.examples else None,
        predictions=(
            predict_test_split(inputs.model, inputs.examples)
            if inputs.model and inputs.examples
            else None
        ),
        evaluation=read_evaluation(inputs.evaluation, inputs.blessing)
        if inputs.evaluation
        else None,
        push=read_push(inputs.pushed_model) if inputs.pushed_model else None,
    )
    blocks = _report_blocks(content)
    html_path = write_report(output_dir, REPORT_TITLE, blocks)
    return ReportResult(html_path, content.predictions)


def _report_blocks(content: _Content) -> list[Block]:
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model_uri = content.inputs.model.uri if content.inputs.model else "no model in this run"
    blocks: list[Block] = [Paragraph(f"Model {model_uri}. Report written {written}.")]
    blocks += _verdict_section(content)
    blocks += _blessing_section(content)
    blocks += _test_section(content)
    blocks += _per_class_section(content)
    blocks += _misclassified_section(content)
    blocks += _training_section(content)
    blocks += _data_section(content)
    blocks += _push_section(content)
    blocks += _sources_section(content)
    return blocks


def _missing(artifact_type: str) -> Paragraph:
    return Paragraph(f"Not available: this run has no {artifact_type} artifact.")


def _fraction(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _verdict_section(content: _Content) -> list[Block]:
    lines = []
    evaluation, predictions, push = content.evaluation, content.predictions, content.push
    if evaluation is None or evaluation.summary.blessed is None:
        lines.append("Blessed: no evaluation in this run.")
    else:
        lines.append(f"Blessed: {'yes' if evaluation.summary.blessed else 'no'}.")
    if predictions is not None:
        lines.append(
            f"Test accuracy {predictions.accuracy:.4f} on {predictions.total} test examples."
        )
    if push is not None:
        lines.append(f"Pushed to {push.destination}." if push.pushed else "Not pushed.")
    return [Heading(SECTION_VERDICT), Paragraph(" ".join(lines), emphasis=True)]


def _blessing_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_BLESSING)]
    evaluation = content.evaluation
    if evaluation is None:
        return blocks + [_missing("ModelEvaluation")]
    summary = evaluation.summary
    if summary.blessed is None:
        items = ["Blessed: no ModelBlessing in this run"]
    else:
        items = [f"Blessed: {'yes' if summary.blessed else 'no'}"]
    items += [f"Threshold: {line}" for line in evaluation.thresholds]
    items.append(
        f"Candidate (TFMA): sparse_categorical_accuracy {_fraction(summary.test_accuracy)}, "
        f"sparse_categorical_crossentropy {_fraction(evaluation.crossentropy)}, "
        f"{summary.test_examples} examples"
    )
    if summary.baseline_compared:
        change = (
            summary.test_accuracy - summary.baseline_accuracy
            if summary.test_accuracy is not None and summary.baseline_accuracy is not None
            else None
        )
        items.append(
            f"Baseline (the last blessed model, {evaluation.baseline_model or 'uri unknown'}): "
            f"sparse_categorical_accuracy {_fraction(summary.baseline_accuracy)}, "
            f"sparse_categorical_crossentropy {_fraction(evaluation.baseline_crossentropy)}, "
            f"{evaluation.baseline_examples} examples; accuracy change {_fraction(change)}"
        )
    else:
        items.append(
            "Baseline: none, since no blessed model existed yet. TFX's Evaluator drops "
            "change thresholds without a baseline, so only the bounds above applied."
        )
    items += [f"Failed: {failure}" for failure in summary.failed_thresholds]
    return blocks + [BulletList(items)]


def _test_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_TEST)]
    predictions = content.predictions
    if predictions is None:
        return blocks + [_missing("Model or Examples")]
    names = content.inputs.label_names
    blocks.append(
        Paragraph(
            f"Test accuracy: {predictions.accuracy:.4f} ({predictions.correct} of "
            f"{predictions.total} test examples correct), from this report's own pass of the "
            f"model's serving_examples signature over the {cfg.TEST_SPLIT} split."
        )
    )
    blocks.append(Paragraph(_tfma_cross_check(predictions, content.evaluation)))
    size = predictions.confusion.shape[0]
    blocks.append(
        Table(
            headers=["true \\ predicted"] + [class_name(names, label) for label in range(size)],
            rows=[
                [class_name(names, label)]
                + [str(int(count)) for count in predictions.confusion[label]]
                for label in range(size)
            ],
            table_id="confusion-matrix",
        )
    )
    blocks.append(
        Picture(
            "confusion_matrix_normalised.png",
            report_plots.plot_confusion_matrix(predictions.row_normalised(), names),
            "Test confusion matrix, each row divided by the true class's examples",
        )
    )
    return blocks


def _tfma_cross_check(predictions: TestPredictions, evaluation: EvaluationData | None) -> str:
    if evaluation is None or evaluation.summary.test_accuracy is None:
        return "TFMA's sparse_categorical_accuracy: not available, so not cross-checked."
    tfma_accuracy = evaluation.summary.test_accuracy
    tfma_examples = evaluation.summary.test_examples
    agrees = (
        abs(tfma_accuracy - predictions.accuracy) <= ACCURACY_TOLERANCE
        and tfma_examples == predictions.total
    )
    verdict = "agrees" if agrees else "DISAGREES: check that both used the same model and split"
    return (
        f"TFMA's sparse_categorical_accuracy (Evaluator): {tfma_accuracy:.4f} on "
        f"{tfma_examples} examples, which {verdict}."
    )


def _per_class_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_PER_CLASS)]
    predictions = content.predictions
    if predictions is None:
        return blocks + [_missing("Model or Examples")]
    names = content.inputs.label_names
    tfma_per_class = content.evaluation.summary.per_class_accuracy if content.evaluation else {}
    precision, recall = predictions.precision(), predictions.recall()

    rows = []
    for label in range(predictions.confusion.shape[0]):
        rows.append(
            [
                class_name(names, label),
                str(int(predictions.confusion[label].sum())),
                str(int(predictions.confusion[:, label].sum())),
                str(int(predictions.confusion[label, label])),
                _fraction(precision[label], 3),
                _fraction(recall[label], 3),
                _fraction(tfma_per_class.get(label), 3),
            ]
        )

    blocks.append(
        Paragraph(
            "Precision: the fraction of the examples predicted as the class that belong to it. "
            "Recall: the fraction of the class's examples predicted correctly, which is the "
            "per-class accuracy TFMA reports on the slice of that label (last column)."
        )
    )
    headers = [
        "class",
        "test examples",
        "predicted as class",
        "correct",
        "precision",
        "recall",
        "accuracy (TFMA)",
    ]
    blocks.append(Table(headers, rows, table_id="per-class"))
    return blocks


def _misclassified_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_MISCLASSIFIED)]
    predictions = content.predictions
    if predictions is None:
        return blocks + [_missing("Model or Examples")]
    wrong = predictions.total - predictions.correct
    if not predictions.misclassified:
        return blocks + [Paragraph("The model classified every test example correctly.")]
    blocks.append(
        Paragraph(
            f"The first {len(predictions.misclassified)} of {wrong} misclassified test examples, "
            "in the order of the test split (#: position in the split), with the predicted "
            "class's probability in brackets."
        )
    )
    blocks.append(
        Picture(
            "misclassified.png",
            report_plots.plot_misclassified(predictions.misclassified, content.inputs.label_names),
            "Misclassified test images with true and predicted classes",
        )
    )
    return blocks


def _training_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_TRAINING)]
    if content.inputs.model_run is None:
        return blocks + [_missing("ModelRun")]
    if content.phases is None:
        return blocks + [Paragraph(f"Not available: the ModelRun artifact has no {HISTORY_FILE}.")]
    if not content.phases:
        return blocks + [Paragraph("history.json records no training phase.")]
    blocks.append(
        Paragraph(
            "Phase head trains the new head on a frozen base; phase fine_tune trains the "
            "unfrozen base at a lower learning rate. Validation runs on the eval split."
        )
    )
    blocks.append(
        Picture(
            "training.png",
            report_plots.plot_training(content.phases),
            "Loss and accuracy per epoch, training and validation",
        )
    )
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_second")
    rows = []
    for phase in content.phases:
        for epoch in range(phase.epochs):
            row = [phase.name, str(epoch + 1)]
            for key in keys:
                values = phase.metrics.get(key, [])
                digits = 1 if key == "images_per_second" else 4
                row.append(_fraction(values[epoch], digits) if epoch < len(values) else "n/a")
            rows.append(row)
    blocks.append(Table(["phase", "epoch", *keys], rows, table_id="training"))
    return blocks


def _data_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_DATA)]
    if content.splits is None:
        return blocks + [_missing("Examples")]
    names = content.inputs.label_names
    if content.inputs.statistics is None:
        blocks.append(_missing("ExampleStatistics"))

    def count(value: int | None) -> str:
        return "n/a" if value is None else str(value)

    rows = []
    for split in content.splits:
        label_range = (
            "n/a" if split.label_min is None else f"{split.label_min:g}..{split.label_max:g}"
        )
        rows.append(
            [
                split.name,
                count(split.num_examples),
                str(sum(split.class_counts.values())),
                count(split.label_present),
                count(split.image_present),
                label_range,
            ]
        )
    blocks.append(
        Paragraph(
            "Examples, label range and present values per split come from the ExampleStatistics "
            "artifact (TFDV). Counts per class are counted exactly in the Examples artifact, "
            "since TFDV's histograms of a numeric label are approximate."
        )
    )
    headers = ["split", "examples", "examples counted", "with label", "with image", "label range"]
    blocks.append(Table(headers, rows, table_id="splits"))
    labels = sorted({label for split in content.splits for label in split.class_counts})
    blocks.append(
        Table(
            ["class"] + [split.name for split in content.splits],
            [
                [class_name(names, label)]
                + [str(split.class_counts.get(label, 0)) for split in content.splits]
                for label in labels
            ],
            table_id="class-counts",
        )
    )
    blocks.append(
        Picture(
            "class_counts.png",
            report_plots.plot_class_counts(content.splits, names),
            "Examples per class and split",
        )
    )
    return blocks


def _push_section(content: _Content) -> list[Block]:
    blocks: list[Block] = [Heading(SECTION_PUSH)]
    push = content.push
    if push is None:
        return blocks + [_missing("PushedModel")]
    if push.pushed:
        return blocks + [Paragraph(f"Pushed version {push.version} to {push.destination}.")]
    return blocks + [Paragraph("Not pushed: the Pusher pushes only blessed models.")]


def _sources_section(content: _Content) -> list[Block]:
    inputs = content.inputs
    artifacts = [
        ("Examples", inputs.examples),
        ("ExampleStatistics", inputs.statistics),
        ("Model", inputs.model),
        ("ModelRun", inputs.model_run),
        ("ModelEvaluation", inputs.evaluation),
        ("ModelBlessing", inputs.blessing),
        ("PushedModel", inputs.pushed_model),
    ]
    items = [
        f"{name}: {artifact.uri} (artifact id {artifact.id})"
        for name, artifact in artifacts
        if artifact is not None
    ]
    return [Heading(SECTION_SOURCES), BulletList(items)]


@tfx.dsl.components.component
def RunReport(  # noqa: N802 - TFX names components like classes.
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_run: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelRun],
    evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    report: tfx.dsl.components.OutputArtifact[RunReportArtifact],
    label_names: tfx.dsl.components.Parameter[list[str]],
    pushed_model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.PushedModel] = None,
) -> None:
    """Write the run report into `report` and record its test accuracy on the artifact."""
    inputs = ReportInputs(
        examples=examples,
        statistics=statistics,
        model=model,
        model_run=model_run,
        evaluation=evaluation,
        blessing=blessing,
        pushed_model=pushed_model,
        label_names=tuple(label_names),
    )
    result = build_report(inputs, report.uri)
    report.set_string_custom_property(run_summary.REPORT_HTML_PROPERTY, HTML_FILE)
    if result.predictions is not None:
        report.set_float_custom_property("test_accuracy", result.predictions.accuracy)
        report.set_int_custom_property("test_examples", result.predictions.total)
    logger.info("Wrote the run report %s.", result.html_path)
