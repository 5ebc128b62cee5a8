"""The HTML of the report stage (pipeline/report.py): the page, its tables and its embedded images.

Everything the page shows is inside the file: CSS inline, images as base64 PNG data URIs,
and a Content-Security-Policy that forbids the browser to fetch anything else, so a page
that would depend on the network or on a file beside it fails visibly in the test, not on
a reader's laptop. Text from the inputs is escaped; Markdown is rendered with raw HTML off.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from common.cli import InputError  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Images and styles from the page itself only; links (the Data Docs) still open.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 0;
  background: #f4f5f8; }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 22px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 0 0 10px; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; }
h3 { font-size: 17px; margin: 18px 0 6px; }
h4 { font-size: 15px; margin: 14px 0 4px; }
nav { margin: 10px 0 14px; display: flex; flex-wrap: wrap; gap: 6px; }
nav a { background: #fff; border: 1px solid #d6dbe4; border-radius: 14px; padding: 2px 11px; color: #2a4d8f;
  text-decoration: none; font-size: 14px; }
.glance { display: flex; flex-wrap: wrap; gap: 10px; margin: 0 0 18px; padding: 0; }
.glance div { background: #fff; border: 1px solid #dfe3ea; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.glance dt { font-size: 12px; color: #5b6476; text-transform: uppercase; letter-spacing: .04em; }
.glance dd { margin: 0; font-size: 20px; font-weight: 600; }
section { background: #fff; border: 1px solid #dfe3ea; border-radius: 10px; padding: 16px 20px; margin: 0 0 18px; }
.lead { color: #4a5266; margin-top: 0; }
.absent { background: #fff7e0; border-left: 4px solid #e0a800; padding: 8px 12px; }
.scroll { overflow-x: auto; margin: 6px 0 10px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e1e5ec; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; }
tr:nth-child(even) td { background: #fafbfd; }
.row { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.row > div { flex: 0 1 auto; max-width: 100%; min-width: 0; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.ok { color: #1e7b34; font-weight: 600; } .warning { color: #a86800; font-weight: 600; }
.error { color: #b3261e; font-weight: 600; }
code { background: #eef1f6; padding: 0 4px; border-radius: 4px; font-size: 90%; }
"""
# Optional: the page reads the same without it. It records what the browser made of the page
# (each image decoded or not, each section's height), which the browser test reads back.
SCRIPT = """window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (i) { i.dataset.decoded = i.naturalWidth > 0 ? "yes" : "no"; });
  document.querySelectorAll("section").forEach(function (s) { s.dataset.height = s.offsetHeight; });
});"""

esc = html.escape


def code(text: object) -> str:
    return f"<code>{esc(str(text))}</code>"


def absent(path: Path, stage: str) -> str:
    """The note a section shows instead of what `path` would have given it."""
    return (
        f'<p class="absent">{code(path)} is not there: the {esc(stage)} stage writes it'
        f" ({code(f'dvc repro {stage}')}).</p>"
    )


def read_json(path: Path) -> Any:
    """A JSON input; InputError naming it when it is not JSON (a missing file is for the caller to check)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rebuild it (`dvc repro`)") from None


def png_uri(data: bytes, source: object) -> str:
    """A data URI of PNG bytes; InputError naming `source` when they are not a PNG."""
    if not data.startswith(PNG_MAGIC):
        raise InputError(f"{source}: not a PNG image; rebuild it (`dvc repro`)")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image(uri: str, alt: str, width: int | None = None) -> str:
    size = f' style="max-width: {width}px"' if width else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{size}>'


def png_file(path: Path, alt: str, stage: str, width: int | None = None) -> str:
    """A PNG a stage drew, embedded; the absent note when it is not there."""
    if not path.is_file():
        return absent(path, stage)
    return image(png_uri(path.read_bytes(), path), alt, width)


def figure(fig: plt.Figure, alt: str, width: int | None = None) -> str:
    """A matplotlib figure, embedded as a PNG (the figure is closed); legends outside the axes are kept."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return image(png_uri(buffer.getvalue(), alt), alt, width)


def row(*parts: str) -> str:
    """`parts` side by side where the page is wide enough, one under the other where not."""
    return '<div class="row">' + "".join(f"<div>{part}</div>" for part in parts) + "</div>"


def table(df: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A table with every cell escaped; `formats` are format specs per column ("{:.3f}")."""
    shown = df.copy()
    for column, spec in (formats or {}).items():
        shown[column] = [spec.format(v) if pd.notna(v) else "—" for v in shown[column]]
    return '<div class="scroll">' + shown.to_html(index=False, border=0, escape=True, na_rep="—") + "</div>"


def markdown(text: str, shift: int = 2) -> str:
    """A stage's Markdown report as HTML (raw HTML off), headings `shift` levels down to sit under the section's h2."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + shift, 6)}"
    rendered = parser.renderer.render(tokens, parser.options, {})
    return rendered.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def page(title: str, glance: Sequence[tuple[str, str]], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: a summary line of `glance` (label, value) and one <section> per (id, title, body)."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name, _ in sections)
    facts = "".join(f"<div><dt>{esc(label)}</dt><dd>{esc(value)}</dd></div>" for label, value in glance)
    body = "\n".join(
        f'<section id="{esc(sid)}">\n<h2>{esc(name)}</h2>\n{content}\n</section>' for sid, name, content in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p class="lead">One page for every stage's results: evaluation, training, data and label quality.
Built by <code>python -m pipeline.report</code> (the last stage of <code>dvc repro</code>).</p>
<nav>{nav}</nav>
<dl class="glance">{facts}</dl>
</header>
<main>
{body}
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""
