"""``report.html``: one self-contained page of an evaluation that can be mailed as it is.

The page is the report's Markdown (:mod:`caloforge.evaluate.report`) rendered with
markdown-it-py (already installed with rich), with every figure embedded as a ``data:`` URI
beside its caption, tables sortable by a click on a column header (floor rows stay on top),
and every number of a column whose observable has a figure linked to that figure. No file,
script or font is fetched from anywhere: the page works offline and after being moved.
"""

from __future__ import annotations

import base64
import html
import itertools
import mimetypes
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["figure_links", "html_report", "render_markdown"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th.sorted-up::after { content: " ▲"; } th.sorted-down::after { content: " ▼"; }
tr.floor td { background: #f7f7ee; font-style: italic; }
td a { color: inherit; text-decoration: underline dotted; }
code { background: #f3f3f3; padding: 0 .2em; }
section.verdict { background: #eef5ff; border-left: 4px solid #3874c8; padding: .3em 1em; }
figure { margin: 1.5em 0; border-top: 1px solid #eee; padding-top: .5em; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9em; color: #444; }
:target { outline: 3px solid #f0b400; }
"""

# Click a header to sort its table (numbers by the first number in the cell, text otherwise);
# rows whose first cell names a floor stay on top.
_SCRIPT = """
(function () {
  function key(cell) {
    var m = cell.textContent.replace(/,/g, "").match(/-?\\d+(\\.\\d+)?(e[-+]?\\d+)?/i);
    return m ? parseFloat(m[0]) : cell.textContent.trim().toLowerCase();
  }
  document.querySelectorAll("table").forEach(function (table) {
    var body = table.tBodies[0];
    if (!body) { return; }
    table.querySelectorAll("th").forEach(function (th, column) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        var up = !th.classList.contains("sorted-up");
        table.querySelectorAll("th").forEach(function (h) {
          h.classList.remove("sorted-up", "sorted-down");
        });
        th.classList.add(up ? "sorted-up" : "sorted-down");
        var rows = Array.prototype.slice.call(body.rows);
        var pinned = rows.filter(function (r) { return r.classList.contains("floor"); });
        var rest = rows.filter(function (r) { return !r.classList.contains("floor"); });
        rest.sort(function (a, b) {
          var x = key(a.cells[column]), y = key(b.cells[column]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        pinned.concat(rest).forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

_FLOOR = re.compile(r"floor|vs itself", re.IGNORECASE)


def _slug(text: str) -> str:
    """An HTML id from a heading or figure name.

    >>> _slug("W1 scores"), _slug("e_radial (ratio)")
    ('w1-scores', 'e-radial-ratio')
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _data_uri(path: Path) -> str | None:
    """``path`` as a ``data:`` URI; None where it cannot be read."""
    try:
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{payload}"


def render_markdown(text: str, links: Mapping[str, str] | None = None) -> str:
    """The HTML of a report's Markdown: headings with ids, tables whose floor rows are marked
    (``class="floor"``) and whose cells under a header in ``links`` (header text -> figure
    name) link to that figure (``#fig-NAME``).

    >>> print(render_markdown("| sample | E |\\n|---|---|\\n| floor | 1 |\\n| a | 2 |", {"E": "e"}))
    ... # doctest: +NORMALIZE_WHITESPACE
    <table> <thead> <tr> <th>sample</th> <th>E</th> </tr> </thead> <tbody>
    <tr class="floor"> <td>floor</td> <td><a href="#fig-e">1</a></td> </tr>
    <tr> <td>a</td> <td><a href="#fig-e">2</a></td> </tr> </tbody> </table>
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    links = dict(links or {})
    headers: list[str] = []
    column = 0
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            token.attrSet("id", _slug(tokens[i + 1].content))
        elif token.type == "thead_open":
            headers = []
        elif token.type == "th_open":
            headers.append(tokens[i + 1].content.strip())
        elif token.type == "tr_open":
            column = 0
            first = tokens[i + 2] if i + 2 < len(tokens) else None
            if first is not None and first.type == "inline" and _FLOOR.search(first.content):
                token.attrSet("class", "floor")
        elif token.type == "td_open":
            name = links.get(headers[column]) if column < len(headers) else None
            inline = tokens[i + 1]
            if name is not None and inline.type == "inline" and inline.content.strip() not in ("", "-"):
                inline.content = f"[{inline.content}](#fig-{_slug(name)})"
                inline.children = md.parseInline(inline.content)[0].children
            column += 1
    return md.renderer.render(tokens, md.options, {})


def figure_links(result: dict[str, Any], headers: list[str]) -> dict[str, str]:
    """Table header -> the report's figure of that observable: a header links to the figure
    whose name, with ``_``, ``-`` and spaces ignored, it matches (or is the start of)."""
    figures = result.get("figures") or {}

    def norm(text: str) -> str:
        return re.sub(r"[\s_\-/\[\]().]+", "", text.lower())

    out = {}
    for header in headers:
        h = norm(header.split("[")[0])
        if not h:
            continue
        match = next((f for f in figures if norm(f) == h), None) or next(
            (f for f in figures if norm(f).startswith(h) or h.startswith(norm(f))), None
        )
        if match is not None:
            out[header] = match
    return out


def _table_headers(markdown: str) -> list[str]:
    """Every header cell of every table of ``markdown``."""
    headers = []
    lines = markdown.splitlines()
    for above, line in itertools.pairwise(lines):
        if line.startswith("|---") and above.startswith("|"):
            headers += [cell.strip() for cell in above.strip("|").split("|")]
    return headers


def html_report(result: dict[str, Any], markdown: str, out: Path) -> str:
    """The self-contained ``report.html`` of an evaluation: ``markdown`` (its ``report.md``,
    whose figures section is replaced by the figures themselves, embedded with their captions)
    rendered; ``out`` is the report directory the figure paths are relative to."""
    body_md, _, _ = markdown.partition("\n## Figures\n")
    title = next((line[2:] for line in markdown.splitlines() if line.startswith("# ")), "caloforge report")
    links = figure_links(result, _table_headers(body_md))
    body = render_markdown(body_md, links)
    head, found, tail = body.partition('<h2 id="verdict">')
    if found:  # the verdict section ends where the next one starts
        verdict, sep, rest = tail.partition("<h2 ")
        body = f'{head}<section class="verdict">{found}{verdict}</section>\n{sep}{rest}'

    captions = result.get("figure_captions") or {}
    figures = []
    for name, path in (result.get("figures") or {}).items():
        uri = _data_uri(out / path)
        if uri is None:
            continue
        caption = html.escape(captions.get(name, name.replace("_", " ")))
        figures.append(
            f'<figure id="fig-{_slug(name)}"><img src="{uri}" alt="{html.escape(name)}">'
            f"<figcaption><b>{html.escape(name.replace('_', ' '))}.</b> {caption}</figcaption></figure>"
        )
    if figures:
        body += '\n<h2 id="figures">Figures</h2>\n' + "\n".join(figures)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
