"""The run report: written by the RunReport component of a real run, and rebuilt by a tool.

The tests marked slow read the report of the shared `first_run` fixture (100
test examples, 10 per class). When test_local_run.py ran first, the store also
contains a later run, so the rebuild names the first run's id.
"""

from __future__ import annotations

import base64
import html.parser
import io
import pathlib
import re

import pytest
from conftest import LABEL_NAMES
from PIL import Image

from components import report, report_plots, report_render
from components.report_data import PhaseHistory
from pipeline import config as cfg
from pipeline import run_summary
from tools import make_report

slow = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEST_EXAMPLES = 100
STATED_ACCURACY = re.compile(
    r"Test accuracy: (?P<accuracy>[0-9.]+) \((?P<correct>\d+) of (?P<total>\d+) test examples"
)


class ReportPage(html.parser.HTMLParser):
    """Headings, tables (by id), image sources and text of a report.html."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.image_sources: list[str] = []
        self.text_parts: list[str] = []
        self._heading: list[str] | None = None
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "h2":
            self._heading = []
        elif tag == "table":
            self._table = []
            self.tables[attributes.get("id", f"table-{len(self.tables)}")] = self._table
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.image_sources.append(attributes["src"])

    def handle_endtag(self, tag):
        if tag == "h2" and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


def body_rows(table: list[list[str]]) -> list[list[str]]:
    """Return the rows of a parsed table without its header row."""
    return table[1:]


@pytest.fixture(scope="module")
def report_path(first_run) -> pathlib.Path:
    _, printed = first_run
    [line] = [line for line in printed.splitlines() if line.startswith("Report: ")]
    return pathlib.Path(line.removeprefix("Report: "))


@pytest.fixture(scope="module")
def page(report_path) -> ReportPage:
    return ReportPage(report_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def first_run_id(first_run) -> str:
    _, printed = first_run
    [line] = [line for line in printed.splitlines() if line.startswith("Run ")]
    return line.removeprefix("Run ")


@slow
def test_summary_names_report_of_run_report_artifact(first_run, first_run_id, report_path):
    output, _ = first_run

    summary = run_summary.summarize_run(
        str(output / "metadata.sqlite"), cfg.PIPELINE_NAME, first_run_id
    )

    assert report_path.is_file()
    assert report_path.name == report_render.HTML_FILE
    assert report_path.parent.parent.parent == output / "pipeline" / "RunReport"
    assert (report_path.parent / report_render.MARKDOWN_FILE).is_file()
    assert summary.report_path == str(report_path)


@slow
def test_report_has_every_section(page, report_path):
    markdown = (report_path.parent / report_render.MARKDOWN_FILE).read_text(encoding="utf-8")

    assert page.headings == list(report.SECTIONS)
    for section in report.SECTIONS:
        assert f"\n## {section}\n" in markdown


@slow
def test_confusion_matrix_counts_add_up_to_test_examples(page):
    table = page.tables["confusion-matrix"]
    rows = body_rows(table)
    counts = [[int(cell) for cell in row[1:]] for row in rows]

    assert table[0][1:] == list(LABEL_NAMES)
    assert [row[0] for row in rows] == list(LABEL_NAMES)
    assert all(len(row) == len(LABEL_NAMES) for row in counts)
    assert sum(map(sum, counts)) == TEST_EXAMPLES
    # Each class has 10 test examples in the fixture.
    assert [sum(row) for row in counts] == [10] * len(LABEL_NAMES)


@slow
def test_stated_accuracy_matches_confusion_diagonal(page):
    counts = [[int(cell) for cell in row[1:]] for row in body_rows(page.tables["confusion-matrix"])]
    diagonal = sum(counts[label][label] for label in range(len(counts)))
    stated = STATED_ACCURACY.search(page.text)

    assert stated is not None
    assert int(stated["total"]) == TEST_EXAMPLES
    assert int(stated["correct"]) == diagonal
    assert float(stated["accuracy"]) == pytest.approx(diagonal / TEST_EXAMPLES, abs=5e-5)


@slow
def test_stated_accuracy_matches_tfma(page, first_run, first_run_id):
    output, _ = first_run
    summary = run_summary.summarize_run(
        str(output / "metadata.sqlite"), cfg.PIPELINE_NAME, first_run_id
    )
    stated = STATED_ACCURACY.search(page.text)

    assert summary.test_accuracy == pytest.approx(int(stated["correct"]) / TEST_EXAMPLES)
    assert "which agrees" in page.text


@slow
def test_per_class_table_has_every_class(page):
    rows = body_rows(page.tables["per-class"])
    confusion = [
        [int(cell) for cell in row[1:]] for row in body_rows(page.tables["confusion-matrix"])
    ]

    assert [row[0] for row in rows] == list(LABEL_NAMES)
    for label, row in enumerate(rows):
        examples, predicted, correct = int(row[1]), int(row[2]), int(row[3])
        assert examples == sum(confusion[label])
        assert predicted == sum(confusion_row[label] for confusion_row in confusion)
        assert correct == confusion[label][label]
        assert float(row[5]) == pytest.approx(correct / examples, abs=5e-4)
        # TFMA's accuracy on the slice of the label is the class's recall.
        assert row[6] == row[5]


@slow
def test_embedded_images_decode_as_png(page):
    prefix = "data:image/png;base64,"

    assert len(page.image_sources) == 4
    for source in page.image_sources:
        assert source.startswith(prefix)
        png = base64.b64decode(source.removeprefix(prefix), validate=True)
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as image:
            image.verify()
            assert image.format == "PNG"


@slow
def test_markdown_links_png_files_beside_it(report_path):
    markdown = (report_path.parent / report_render.MARKDOWN_FILE).read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)

    assert len(linked) == 4
    for name in linked:
        assert (report_path.parent / name).read_bytes().startswith(PNG_SIGNATURE)


@slow
def test_report_shows_blessing_and_push(page, first_run):
    output, _ = first_run
    [version] = sorted((output / "serving" / "cifar10").iterdir())

    assert "Blessed: yes" in page.text
    assert "SparseCategoricalAccuracy on the overall slice: the bound >= 0.0000" in page.text
    assert "Baseline: none" in page.text
    assert f"Pushed version {version.name} to {version}." in page.text


@slow
def test_data_section_counts_every_split(page):
    splits = {row[0]: row for row in body_rows(page.tables["splits"])}
    class_counts = body_rows(page.tables["class-counts"])

    assert set(splits) == {cfg.TRAIN_SPLIT, cfg.EVAL_SPLIT, cfg.TEST_SPLIT}
    assert splits[cfg.TEST_SPLIT][1] == str(TEST_EXAMPLES)
    for row in splits.values():
        # Examples per the statistics equal the examples counted in the split.
        assert row[1] == row[2]
    assert [row[0] for row in class_counts] == list(LABEL_NAMES)
    assert sum(int(row[3]) for row in class_counts) == TEST_EXAMPLES


@slow
def test_make_report_rebuilds_same_report(first_run, first_run_id, page, tmp_path, capsys):
    output, _ = first_run
    target = tmp_path / "rebuilt"

    status = make_report.main(
        [
            "--metadata",
            str(output / "metadata.sqlite"),
            "--run",
            first_run_id,
            "--output-dir",
            str(target),
        ]
    )
    printed = capsys.readouterr().out.strip()

    assert status == 0
    assert printed == str(target / report_render.HTML_FILE)
    rebuilt = ReportPage((target / report_render.HTML_FILE).read_text(encoding="utf-8"))
    assert rebuilt.headings == page.headings
    assert rebuilt.tables == page.tables
    assert STATED_ACCURACY.search(rebuilt.text)[0] == STATED_ACCURACY.search(page.text)[0]
    assert len(rebuilt.image_sources) == len(page.image_sources)
    assert (target / report_render.MARKDOWN_FILE).is_file()


@slow
def test_make_report_unknown_run_exits_2(first_run, tmp_path, capsys):
    output, _ = first_run

    status = make_report.main(
        [
            "--metadata",
            str(output / "metadata.sqlite"),
            "--run",
            "no-such-run",
            "--output-dir",
            str(tmp_path / "report"),
        ]
    )

    assert status == 2
    assert "no pipeline run 'no-such-run'" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_make_report_missing_store_exits_2(tmp_path, capsys):
    status = make_report.main(
        ["--metadata", str(tmp_path / "none.sqlite"), "--output-dir", str(tmp_path / "report")]
    )

    assert status == 2
    assert "No ML Metadata store" in capsys.readouterr().err


BLOCKS = [
    report_render.Heading("Verdict"),
    report_render.Paragraph("a < b & c", emphasis=True),
    report_render.Table(["class", "count"], [["cat | dog", "3"]], table_id="counts"),
    report_render.Picture("dot.png", PNG_SIGNATURE + b"rest", "a dot"),
]


def test_renderers_escape_text():
    page = report_render.render_html("Title", BLOCKS)
    markdown = report_render.render_markdown("Title", BLOCKS)

    assert "<strong>a &lt; b &amp; c</strong>" in page
    assert '<table id="counts">' in page
    assert "| cat \\| dog | 3 |" in markdown
    assert "![a dot](dot.png)" in markdown


def test_write_report_replaces_earlier_report(tmp_path):
    target = tmp_path / "report"
    report_render.write_report(str(target), "First", BLOCKS)
    (target / "stale.png").write_bytes(b"old")

    path = report_render.write_report(str(target), "Second", BLOCKS)

    assert path == str(target / report_render.HTML_FILE)
    assert "<title>Second</title>" in (target / report_render.HTML_FILE).read_text()
    assert not (target / "stale.png").exists()
    assert sorted(item.name for item in tmp_path.iterdir()) == ["report"]


def test_write_report_rejects_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="contains files but no report.html"):
        report_render.write_report(str(tmp_path), "Title", BLOCKS)

    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_training_plot_has_fixed_size():
    head = PhaseHistory("head", {"loss": [2.1, 1.7], "val_loss": [1.9, 1.6]})
    fine_tune = PhaseHistory("fine_tune", {"loss": [1.3], "accuracy": [0.55]})

    png = report_plots.plot_training([head, fine_tune])

    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        # 12 x 4.5 inches at 100 dots per inch.
        assert image.size == (1200, 450)
