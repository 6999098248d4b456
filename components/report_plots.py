"""The run report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Figure sizes are fixed in inches at DPI dots per inch, so every PNG has the
same pixel size from run to run and is readable at 100 % zoom.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from components.report_data import Misclassified, PhaseHistory, SplitData

DPI = 100
GRID_COLUMNS = 5
# Up to this many epochs in total, the training plot labels every epoch.
MAX_LABELLED_EPOCHS = 20


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No "Software" entry, so the bytes depend only on the figure.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def class_name(label_names: tuple[str, ...], label: int) -> str:
    """Return the name of class `label`, or its id when the run has no name for it."""
    return label_names[label] if 0 <= label < len(label_names) else str(label)


def plot_training(phases: list[PhaseHistory]) -> bytes:
    """Draw training and validation loss and accuracy per epoch, the phases one after another."""
    figure = Figure(figsize=(12, 4.5))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    offset = 0
    for phase in phases:
        epochs = np.arange(offset + 1, offset + phase.epochs + 1)
        for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            for prefix, style, label in (("", "-", "training"), ("val_", "--", "validation")):
                values = phase.metrics.get(prefix + key, [])
                if values:
                    axes.plot(
                        epochs[: len(values)],
                        values,
                        style,
                        marker="o",
                        label=f"{phase.name} {label}",
                    )
            if offset:
                axes.axvline(offset + 0.5, color="grey", linewidth=1, linestyle=":")
        offset += phase.epochs
    for axes, title in ((loss_axes, "Loss"), (accuracy_axes, "Accuracy")):
        axes.set_title(title, fontsize=13)
        axes.set_xlabel("epoch (both phases numbered in sequence)", fontsize=11)
        # MaxNLocator falls back to fractional ticks when fewer than two integers fit.
        if offset <= MAX_LABELLED_EPOCHS:
            axes.set_xticks(range(1, offset + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(0.5, max(offset, 1) + 0.5)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=10)
    accuracy_axes.set_ylim(0, 1)
    figure.tight_layout()
    return _png(figure)


def plot_confusion_matrix(fractions: np.ndarray, label_names: tuple[str, ...]) -> bytes:
    """Draw the row-normalised confusion matrix as a heatmap with each fraction written in it."""
    figure = Figure(figsize=(9, 8))
    axes = figure.subplots()
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)

    size = fractions.shape[0]
    names = [class_name(label_names, label) for label in range(size)]
    axes.set_xticks(range(size), names, rotation=45, ha="right", fontsize=11)
    axes.set_yticks(range(size), names, fontsize=11)
    axes.set_xlabel("predicted class", fontsize=12)
    axes.set_ylabel("true class", fontsize=12)
    axes.set_title("Test confusion matrix, fraction of each true class", fontsize=13)

    for row in range(size):
        for column in range(size):
            value = fractions[row, column]
            axes.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=10,
                # White text on cells darker than half the scale.
                color="white" if value > 0.5 else "black",
            )
    figure.tight_layout()
    return _png(figure)


def plot_misclassified(items: list[Misclassified], label_names: tuple[str, ...]) -> bytes:
    """Draw misclassified test images in a grid, titled with their true and predicted classes."""
    rows = max(1, math.ceil(len(items) / GRID_COLUMNS))
    figure = Figure(figsize=(11, 2.6 * rows))
    grid = figure.subplots(rows, GRID_COLUMNS, squeeze=False)
    for position, axes in enumerate(grid.flat):
        axes.axis("off")
        if position >= len(items):
            continue
        item = items[position]
        pixels = np.asarray(Image.open(io.BytesIO(item.image_bytes)).convert("RGB"))
        axes.imshow(pixels, interpolation="nearest")
        axes.set_title(
            f"#{item.index} true: {class_name(label_names, item.true_label)}\n"
            f"predicted: {class_name(label_names, item.predicted_label)} "
            f"({item.confidence:.2f})",
            fontsize=10,
        )
    figure.tight_layout()
    return _png(figure)


def plot_class_counts(splits: list[SplitData], label_names: tuple[str, ...]) -> bytes:
    """Draw the examples per class of each split as grouped bars."""
    labels = sorted({label for split in splits for label in split.class_counts})
    figure = Figure(figsize=(12, 4.5))
    axes = figure.subplots()
    width = 0.8 / max(1, len(splits))
    for number, split in enumerate(splits):
        positions = np.arange(len(labels)) + (number - (len(splits) - 1) / 2) * width
        counts = [split.class_counts.get(label, 0) for label in labels]
        axes.bar(positions, counts, width, label=split.name)
    axes.set_xticks(
        range(len(labels)), [class_name(label_names, label) for label in labels], fontsize=11
    )
    axes.set_ylabel("examples", fontsize=12)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Examples per class and split", fontsize=13)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return _png(figure)
