"""The strategies report's text as blocks (headings, paragraphs, lists, tables, figures) and its two renderings:
``report.md`` (figures linked) and a self-contained ``report.html`` (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["FIGURES", "Block", "render_html", "render_markdown"]

#: the report's figure folder, relative to the report
FIGURES = "figures"


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``kind`` is h1, h2, p, list, table or figure."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    table: pd.DataFrame | None = field(default=None, compare=False)
    figure: str = ""



def _md_table(table: pd.DataFrame) -> str:
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row.tolist()) + " |")
    return "\n".join(lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    """report.md: figures are linked from ``figures/<name>.png``."""
    parts = []
    for block in blocks:
        if block.kind == "h1":
            parts.append(f"# {block.text}")
        elif block.kind == "h2":
            parts.append(f"## {block.text}")
        elif block.kind == "p":
            parts.append(block.text)
        elif block.kind == "list":
            parts.append("\n".join(f"- {item}" for item in block.items) or "- (none)")
        elif block.kind == "table":
            parts.append(_md_table(block.table) if block.table is not None and not block.table.empty else "(none)")
        elif block.kind == "figure":
            parts.append(f"![{block.text}]({FIGURES}/{block.figure}.png)\n\n*{block.text}*")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 6px;
text-align:left}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:min(100%,760px)}figcaption{font-size:0.9em;
color:#555}li{margin:0.4em 0}"""


def render_html(blocks: Sequence[Block], figures_dir: Path) -> str:
    """report.html: one file, figures embedded as base64 PNG, no scripts, no external resources."""
    body = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{html.escape(block.text)}</{block.kind}>")
        elif block.kind == "p":
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif block.kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "table":
            table = block.table if block.table is not None else pd.DataFrame()
            body.append(table.to_html(index=False, escape=True, border=0) if not table.empty else "<p>(none)</p>")
        elif block.kind == "figure":
            png = Path(figures_dir) / f"{block.figure}.png"
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.figure)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block.text)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>robverify strategies report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
