"""report.html: report.md as one self-contained page, rendered from the same markdown (markdown-it-py, CommonMark plus
tables) so the two files cannot drift apart; what the page holds: docs/report.md.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

_IMAGE = re.compile(r'<img src="(plots/[^"]+\.png)"')
_INTERACTIVE = re.compile(r" \(\[interactive\]\(plots/[^)]+\.html\)\)")
"""report.md's links to the interactive chart files: left out of the page, which must stand alone."""

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px; line-height: 1.45;
       color: #1f2328; max-width: 1400px; margin: 0 auto; padding: 16px 24px; background: #fff; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: 6px; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; font-size: 12.5px; }
img { max-width: min(100%, 1000px); height: auto; border: 1px solid #eaeef2; }
"""


def embed_images(body: str, root: Path) -> str:
    """Replace every `<img src="plots/<name>.png"` with a base64 data URI of that file (a missing file keeps its
    path, visibly broken rather than silently dropped)."""

    def inline(match: re.Match[str]) -> str:
        path = root / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    return _IMAGE.sub(inline, body)


def render_html(markdown_text: str, root: Path, title: str) -> str:
    """The whole page of report.md's text; images under `root/plots/` embedded."""
    body = MarkdownIt("commonmark").enable("table").render(_INTERACTIVE.sub("", markdown_text))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{embed_images(body, root)}</body>\n</html>\n")
