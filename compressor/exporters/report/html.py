"""report.html: the Markdown rendered by markdown-it-py (tables on, raw HTML escaped), the report's classes on
noisy cells, flags and the headline, sample grids and plots embedded as PNG data: one self-contained page."""

from __future__ import annotations

import base64
import html
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from .figures import PLOT_CAPTIONS


def _cell_attrs(self, tokens, idx, options, env) -> str:
    """<td>: flagged when the cell carries ⚠ (a noisy measurement)."""
    if "⚠" in tokens[idx + 1].content:
        tokens[idx].attrJoin("class", "noisy")
    return self.renderToken(tokens, idx, options, env)


def _all_bold(inline) -> bool:
    """Whether an inline token is one ``**…**`` and nothing else."""
    kinds = [k.type for k in inline.children or [] if k.type != "text" or k.content]
    return kinds[:1] == ["strong_open"] and kinds[-1:] == ["strong_close"] and kinds.count("strong_open") == 1


def _paragraph_attrs(self, tokens, idx, options, env) -> str:
    """<p>: a ⚠ line is a flag; a paragraph that is all bold is the headline."""
    inline = tokens[idx + 1]
    if inline.content.startswith("⚠"):
        tokens[idx].attrJoin("class", "flag")
    elif _all_bold(inline):
        tokens[idx].attrJoin("class", "headline")
    return self.renderToken(tokens, idx, options, env)


def _embedded_image(self, tokens, idx, options, env) -> str:
    """An image of the Markdown, embedded as a data URI (dropped when its bytes are not at hand)."""
    token = tokens[idx]
    images = env.get("images")
    data = images.get(unquote(token.attrGet("src") or "")) if isinstance(images, dict) else images
    if not data:
        return ""
    alt = self.renderInlineAsText(token.children or [], options, env)
    return f'<img alt="{escapeHtml(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def markdown_renderer() -> MarkdownIt:
    """CommonMark with tables; raw HTML in the text is escaped; report classes on cells, flags and headline."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("td_open", _cell_attrs)
    md.add_render_rule("paragraph_open", _paragraph_attrs)
    md.add_render_rule("image", _embedded_image)
    return md


REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
    "th{background:#f3f3f3}td.noisy{background:#fff3e0}p.flag{background:#fff3e0;padding:6px 10px}"
    "p.headline{font-size:17px;font-weight:600;background:#eef5fb;padding:8px 12px}"
    "figure{display:block;margin:1.5em 0}figcaption{font-size:13px;color:#555}img{max-width:100%}"
)


def build_html(markdown_text: str, plots: dict[str, str], title: str, samples_png=None) -> str:
    """A self-contained page: the Markdown rendered by markdown-it-py, plus embedded plots. ``samples_png``: the
    bytes of every sample image, or {path in the markdown: bytes}."""
    body = markdown_renderer().render(markdown_text, {"images": samples_png})
    figs = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{v}">'
        f"<figcaption>{html.escape(PLOT_CAPTIONS.get(k, k))}</figcaption></figure>"
        for k, v in plots.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{REPORT_CSS}</style></head><body>{body}" + (f"<h2>Plots</h2>{figs}" if figs else "") + "</body></html>"
    )
