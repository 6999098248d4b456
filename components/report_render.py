"""Render a run report as one self-contained HTML page and as Markdown with PNG files.

The report is a list of blocks (headings, paragraphs, lists, tables, images)
that both renderers walk, so the two versions contain the same text and numbers.
`write_report` builds the folder under a temporary name and renames it into
place, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import shutil
import tempfile

import tensorflow as tf

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"

_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; }
.verdict { font-size: 1.15em; }
"""


@dataclasses.dataclass
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass
class Paragraph:
    text: str
    # Shown larger in HTML and in bold in Markdown.
    emphasis: bool = False


@dataclasses.dataclass
class BulletList:
    items: list[str]


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    # HTML id of the table, so scripts and tests can find it.
    table_id: str | None = None


@dataclasses.dataclass
class Picture:
    """A PNG image: embedded as a data URI in HTML, a file beside the Markdown."""

    file_name: str
    png: bytes
    alt: str


Block = Heading | Paragraph | BulletList | Table | Picture


def render_html(title: str, blocks: list[Block]) -> str:
    """Return the report as one HTML page with every image embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for block in blocks:
        parts.append(_html_block(block))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        css = ' class="verdict"' if block.emphasis else ""
        text = html.escape(block.text)
        return f"<p{css}><strong>{text}</strong></p>" if block.emphasis else f"<p>{text}</p>"
    if isinstance(block, BulletList):
        items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        table_id = f' id="{html.escape(block.table_id)}"' if block.table_id else ""
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.headers)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in block.rows
        )
        return f"<table{table_id}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Picture):
        data = base64.b64encode(block.png).decode("ascii")
        return f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}"></p>'
    raise TypeError(f"Unknown report block {block!r}.")


def render_markdown(title: str, blocks: list[Block]) -> str:
    """Return the report as Markdown that links the PNG files written beside it."""
    parts = [f"# {title}"]
    for block in blocks:
        parts.append(_markdown_block(block))
    return "\n\n".join(parts) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return f"**{block.text}**" if block.emphasis else block.text
    if isinstance(block, BulletList):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_markdown_cell(cell) for cell in block.headers) + " |",
            "| " + " | ".join("---" for _ in block.headers) + " |",
        ]
        lines += [
            "| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in block.rows
        ]
        return "\n".join(lines)
    if isinstance(block, Picture):
        return f"![{block.alt}]({block.file_name})"
    raise TypeError(f"Unknown report block {block!r}.")


def write_report(output_dir: str, title: str, blocks: list[Block]) -> str:
    """Write report.html, report.md and the PNG files into `output_dir`, and return the HTML path.

    `output_dir` may be missing, empty or contain an earlier report, which is
    replaced. Files for a remote URI (e.g. gs://) are copied one by one, with
    no rename.
    """
    if "://" in output_dir:
        # NOTE: this branch, for Kubeflow's gs:// artifacts, has not been run.
        with tempfile.TemporaryDirectory(prefix="run-report-") as staging:
            _write_files(staging, title, blocks)
            tf.io.gfile.makedirs(output_dir)
            for name in sorted(os.listdir(staging)):
                tf.io.gfile.copy(
                    os.path.join(staging, name), f"{output_dir.rstrip('/')}/{name}", overwrite=True
                )
        return f"{output_dir.rstrip('/')}/{HTML_FILE}"

    output_dir = os.path.abspath(output_dir)
    has_other_files = (
        os.path.isdir(output_dir)
        and os.listdir(output_dir)
        and not os.path.isfile(os.path.join(output_dir, HTML_FILE))
    )
    if has_other_files:
        raise FileExistsError(
            f"{output_dir} contains files but no {HTML_FILE}, so it is not an earlier report; "
            "pass a new or empty folder so that no unrelated file is replaced."
        )
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".report-", dir=parent)
    try:
        _write_files(staging, title, blocks)
        os.chmod(staging, 0o755)
        if os.path.isdir(output_dir):
            previous = tempfile.mkdtemp(prefix=".report-old-", dir=parent)
            os.rename(output_dir, os.path.join(previous, "report"))
            try:
                os.rename(staging, output_dir)
            except OSError:
                os.rename(os.path.join(previous, "report"), output_dir)
                raise
            finally:
                if os.path.isdir(output_dir):
                    shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(output_dir, HTML_FILE)


def _write_files(folder: str, title: str, blocks: list[Block]) -> None:
    for block in blocks:
        if isinstance(block, Picture):
            with open(os.path.join(folder, block.file_name), "wb") as handle:
                handle.write(block.png)
    with open(os.path.join(folder, MARKDOWN_FILE), "w", encoding="utf-8") as handle:
        handle.write(render_markdown(title, blocks))
    with open(os.path.join(folder, HTML_FILE), "w", encoding="utf-8") as handle:
        handle.write(render_html(title, blocks))
