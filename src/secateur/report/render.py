"""The two renderers of report blocks, markdown and self-contained HTML, and the report writer.

The HTML embeds every figure as a base64 data URI and its CSS inline, so ``report.html`` is
one file that opens anywhere; every text is escaped. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from secateur.io.rundir import report_paths
from secateur.io.storage import atomic_write_bytes
from secateur.report.blocks import Block, Heading, Image, Meta, Para, Table

# ----------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    """Escape a table cell for markdown."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    """A GitHub-flavoured markdown table."""
    rule = ["---:" if a == "r" else "---" for a in t.align]
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |", "| " + " | ".join(rule) + " |"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows] + [""]


def _md_block(b: Block) -> list[str]:
    """One block as markdown lines (each block ends with a blank line)."""
    if isinstance(b, Heading):
        return ["#" * b.level + " " + b.text, ""]
    if isinstance(b, Meta):
        return [f"- **{k}**: {v}" for k, v in b.items] + [""]
    if isinstance(b, Table):
        return _md_table(b)
    if isinstance(b, Para):
        return [b.text, ""]
    if isinstance(b, Image):
        return [f"![{b.caption}]({b.filename})", "", f"*{b.caption}*", ""]
    return []


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as markdown."""
    lines = [line for b in blocks for line in _md_block(b)]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:980px;margin:0 auto;padding:24px 28px;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #2e86c1;padding-bottom:6px}
h2{font-size:1.2em;margin-top:1.8em;color:#1b4f72}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px}
th{background:#eaf2f8}tr:nth-child(even) td{background:#f8f9f9}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{font-weight:500}
figure{margin:16px 0}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
p.note{background:#fef9e7;border-left:4px solid #f1c40f;padding:8px 12px}
"""


def _html_cell(text: str, tag: str, align: str) -> str:
    """One escaped table cell (markdown bold ``**x**`` becomes <strong>)."""
    body = html.escape(text)
    if text.startswith("**") and text.endswith("**") and len(text) > 4:
        body = f"<strong>{html.escape(text[2:-2])}</strong>"
    return f'<{tag} class="{align}">{body}</{tag}>'


def _html_table(b: Table) -> str:
    """A table with one header row; cells aligned by class."""
    head = "<tr>" + "".join(_html_cell(h, "th", a) for h, a in zip(b.headers, b.align)) + "</tr>"
    body = "".join("<tr>" + "".join(_html_cell(c, "td", a) for c, a in zip(row, b.align)) + "</tr>"
                   for row in b.rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _html_block(b: Block, images: Mapping[str, bytes]) -> str:
    """Render one block as HTML (every text escaped)."""
    e = html.escape
    if isinstance(b, Heading):
        return f"<h{b.level}>{e(b.text)}</h{b.level}>"
    if isinstance(b, Meta):
        return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in b.items) + "</dl>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Para):
        return f'<p class="note">{e(b.text)}</p>'
    data = base64.b64encode(images[b.filename]).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption, quote=True)}">'
            f"<figcaption>{e(b.caption)}</figcaption></figure>")


def to_html(blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    """Render blocks as one self-contained HTML page; ``images`` maps PNG file names to bytes."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "secateur report")
    body = "\n".join(_html_block(b, images) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


# ----------------------------------------------------------------------------- files


def write_report(out_dir: Path, stem: str, blocks: Sequence[Block], pngs: Mapping[str, bytes]) -> dict[str, Path]:
    """Write the PNGs, ``<stem>.md`` and ``<stem>.html`` atomically; return their paths.

    Keys: each PNG's name without ``.png`` (``tradeoff``, ...), then ``md`` and ``html``.
    """
    out: dict[str, Path] = {}
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
        out[name.rsplit(".", 1)[0]] = out_dir / name
    out.update(report_paths(out_dir, stem))
    atomic_write_bytes(out["md"], to_markdown(blocks).encode("utf-8"))
    atomic_write_bytes(out["html"], to_html(blocks, pngs).encode("utf-8"))
    return out
