"""The text inside the ``<table>`` elements of an HTML page (for checks on report.html)."""

from __future__ import annotations

from html.parser import HTMLParser


class TableText(HTMLParser):
    """Feed it a page; ``.text`` holds the text found inside tables."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.text = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag == "table"

    def handle_endtag(self, tag):
        self.depth -= tag == "table"

    def handle_data(self, data):
        if self.depth:
            self.text.append(data)
