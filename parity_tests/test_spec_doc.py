"""Run the worked examples of docs/spec.md as doctests and check that its links resolve.

The page is Markdown, so fence lines (```python, ```) are blanked before doctest parses
it. Otherwise a closing fence right after an expected output would become part of that
output. Examples between the HTML comments

    <!-- doctest-needs: LLAMA2_TOKENIZER_MODEL -->
    <!-- doctest-needs: end -->

use real third-party data. They run in their own test, with the data path injected as
the global LLAMA2_TOKENIZER_MODEL, and skip when the data is absent. Dropped lines are
blanked rather than removed, so doctest's line numbers match the file.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPEC = PROJECT_ROOT / "docs" / "spec.md"
OPTION_FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

NEEDS_DATA = re.compile(r"^<!-- doctest-needs: (\w+) -->$")
NEEDS_END = "<!-- doctest-needs: end -->"
FENCE = re.compile(r"^```\w*$")

# A link to code such as [`Llama.forward`](../numpy_llama/model.py).
CODE_LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\((\.\./[\w/]+\.py)\)")
SECTION_LINK = re.compile(r"\]\(#([\w-]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


class SpecParser(doctest.DocTestParser):
    """Parse Markdown doctests, keeping either the examples that need no data or those that need `variable`."""

    def __init__(self, variable: str | None = None):
        self.variable = variable

    def parse(self, string: str, name: str = "<string>"):
        kept = []
        needs = None
        for number, line in enumerate(string.splitlines(), start=1):
            stripped = line.strip()
            if stripped == NEEDS_END:
                if needs is None:
                    raise ValueError(
                        f"{name}:{number}: doctest-needs end without a start; add the opening comment above it"
                    )
                needs = None
                kept.append("")
                continue
            match = NEEDS_DATA.match(stripped)
            if match:
                if needs is not None:
                    raise ValueError(
                        f"{name}:{number}: doctest-needs section opened inside another one; close the first"
                    )
                needs = match.group(1)
                kept.append("")
                continue
            if FENCE.match(stripped) or needs != self.variable:
                kept.append("")
            else:
                kept.append(line)
        if needs is not None:
            raise ValueError(f"{name}: doctest-needs section {needs!r} is never closed; add {NEEDS_END}")
        return super().parse("\n".join(kept) + "\n", name)


def run_spec(parser: SpecParser, globs: dict) -> tuple[doctest.TestResults, str]:
    """Run the doctests of docs/spec.md and return (results, doctest's failure report)."""
    report = io.StringIO()
    with np.printoptions(precision=4, suppress=True), contextlib.redirect_stdout(report):
        results = doctest.testfile(
            str(SPEC),
            module_relative=False,
            globs={"np": np, **globs},
            optionflags=OPTION_FLAGS,
            parser=parser,
            report=False,
        )
    return results, report.getvalue()


def test_spec_examples_pass():
    results, report = run_spec(SpecParser(), {})
    assert results.attempted > 0, "docs/spec.md has no doctest examples outside data sections"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed:\n{report}"


def test_spec_tokenizer_examples_pass(data_dir):
    path = data_dir / "llama2_spm" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"Llama 2 tokenizer.model not found at {path}")
    results, report = run_spec(SpecParser("LLAMA2_TOKENIZER_MODEL"), {"LLAMA2_TOKENIZER_MODEL": str(path)})
    assert results.attempted > 0, "docs/spec.md has no tokenizer examples"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed:\n{report}"


def test_spec_parser_blanks_fences_and_sections():
    text = "\n".join(
        [
            "```python",
            ">>> 1 + 1",
            "2",
            "```",
            "<!-- doctest-needs: DATA -->",
            "```python",
            ">>> DATA",
            "'x'",
            "```",
            "<!-- doctest-needs: end -->",
        ]
    )
    offline = SpecParser().get_examples(text)
    assert [(e.source, e.want, e.lineno) for e in offline] == [("1 + 1\n", "2\n", 1)]
    with_data = SpecParser("DATA").get_examples(text)
    assert [(e.source, e.want, e.lineno) for e in with_data] == [("DATA\n", "'x'\n", 6)]


def test_spec_parser_rejects_open_section():
    with pytest.raises(ValueError, match="never closed"):
        SpecParser().get_examples("<!-- doctest-needs: DATA -->\n>>> 1\n1\n")


def test_spec_code_links_resolve():
    links = CODE_LINK.findall(SPEC.read_text(encoding="utf-8"))
    assert links, "docs/spec.md links to no code"
    missing = []
    for qualified_name, relative_path in links:
        path = (SPEC.parent / relative_path).resolve()
        if not path.is_file():
            missing.append(f"{relative_path} (file not found)")
            continue
        source = path.read_text(encoding="utf-8")
        for part in qualified_name.split("."):
            if not re.search(rf"^\s*(def|class) {re.escape(part)}\b|^{re.escape(part)} =", source, re.MULTILINE):
                missing.append(f"{qualified_name} in {relative_path} ({part} is not defined there)")
                break
    assert not missing, "broken code links in docs/spec.md:\n" + "\n".join(missing)


def github_anchor(heading: str) -> str:
    """Return the anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_spec_section_links_resolve():
    text = SPEC.read_text(encoding="utf-8")
    anchors = {github_anchor(heading) for heading in HEADING.findall(text)}
    targets = SECTION_LINK.findall(text)
    assert targets, "docs/spec.md links to none of its sections"
    missing = sorted(set(targets) - anchors)
    assert not missing, f"links to missing sections in docs/spec.md: {missing}"
