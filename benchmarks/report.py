"""Replace one generated section of docs/benchmarks.md and keep the rest of the page.

Each benchmark script owns the text between `<!-- begin NAME -->` and `<!-- end NAME -->`.
Rerunning one script rewrites only its own section, so the figures of the other script and
the hand-written analysis stay in place. The page is written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_section(path: Path, name: str, text: str) -> str:
    """Put `text` between the markers of section `name` in `path` and return the new page.

    A page without that section gets it appended; a missing page is created.
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    page = path.read_text() if path.exists() else ""

    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        _, tail = rest.split(end, 1)
        page = head + block + tail.lstrip("\n")
    else:
        page = (page.rstrip() + "\n\n" if page.strip() else "") + block

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(page)
    os.replace(temporary, path)
    return page
