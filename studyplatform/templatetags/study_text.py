"""The researcher's texts (consent, instructions, debrief) as HTML paragraphs.

Texts are typed in a text box or wrapped in source files, so a single line break is not a break in the reader's
page: blank lines separate paragraphs, lines starting "1." or "-" are list items (an indented line continues the
item), and every other line break inside a paragraph is a space.
"""

import re

from django import template
from django.utils.html import format_html, format_html_join

register = template.Library()

ITEM = re.compile(r"^(?:(\d+)[.)]|[-*\u2022])\s+(.*)$")


def _blocks(paragraph):
    """[("p", text) | ("ol" / "ul", [items])] of one paragraph, in order."""
    blocks = []
    for raw in paragraph.splitlines():
        line = raw.strip()
        if not line:
            continue
        item = ITEM.match(line)
        last = blocks[-1] if blocks else None
        if item:
            kind = "ol" if item.group(1) else "ul"
            if last is None or last[0] != kind:
                blocks.append((kind, []))
            blocks[-1][1].append(item.group(2))
        elif last is not None and last[0] != "p" and raw[:1].isspace():
            last[1][-1] += " " + line
        elif last is not None and last[0] == "p":
            blocks[-1] = ("p", f"{last[1]} {line}")
        else:
            blocks.append(("p", line))
    return blocks


@register.filter(is_safe=True)
def paragraphs(text):
    """HTML of a plain text: <p> per paragraph, <ol>/<ul> for list items, everything escaped."""
    html = []
    for paragraph in re.split(r"\n\s*\n", str(text or "").replace("\r\n", "\n").strip()):
        for kind, content in _blocks(paragraph):
            if kind == "p":
                html.append(format_html("<p>{}</p>", content))
            else:
                items = format_html_join("", "<li>{}</li>", ((item,) for item in content))
                html.append(format_html("<{}>{}</{}>", kind, items, kind))
    return format_html_join("\n", "{}", ((part,) for part in html))
