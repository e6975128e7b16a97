"""Render DiffResults as a text table, an error-per-layer plot and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parity_tests.diff import DiffResult, DiffRow, tolerance_for
from weights_tools.trace_format import LAYER_KINDS, write_files_atomic

HEADER = ("", "trace point", "shape", "max_abs", "max_rel", "cosine", "nmse", "bound", "result")


def _cells(row: DiffRow, first: DiffRow | None) -> tuple[str, ...]:
    marker = ">>" if row is first else ""
    shape = "x".join(str(n) for n in row.shape)
    if row.metrics is None:
        return (marker, row.name, shape, "", "", "", "", "", f"{row.status.upper()} {row.note}".strip())
    m = row.metrics
    result = "ok" if row.status == "pass" else "FAIL"
    if row.note:
        result = f"{result} ({row.note})"
    return (
        marker,
        row.name,
        shape,
        f"{m.max_abs:.3e}",
        f"{m.max_rel:.3e}",
        f"{m.cosine:.9f}",
        f"{m.nmse:.3e}",
        f"{row.bound:.2e}",
        result,
    )


def summary_line(result: DiffResult) -> str:
    """One line: how many rows failed and where the first failure is."""
    failed = sum(row.failed for row in result.rows)
    compared = sum(row.status != "absent" for row in result.rows)
    absent = len(result.rows) - compared
    text = f"{result.candidate.label} vs {result.reference.label} ({result.dtype} tolerance): "
    if result.passed:
        text += f"all {compared} compared trace points pass"
    else:
        text += f"{failed} of {compared} trace points fail; first failure: {result.first_failure.name}"
    if absent:
        text += f"; {absent} absent from the candidate"
    return text


def format_table(result: DiffResult) -> str:
    """Return the text table of one comparison, first failure marked with '>>', then the findings."""
    first = result.first_failure
    rows = [HEADER] + [_cells(row, first) for row in result.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(summary_line(result))
    lines.extend(f"diagnosis: {finding}" for finding in result.findings)
    return "\n".join(lines)


def _scaled_error(row: DiffRow) -> float | None:
    if row.metrics is None or row.metrics.peak == 0:
        return None
    # The plot's log axis cannot show exact zeros, so they sit at a floor below float32 rounding.
    return max(row.metrics.max_abs / row.metrics.peak, 1e-12)


def render_plot_png(results: Sequence[DiffResult]) -> bytes:
    """Plot max_abs / max|reference| against layer, one line per activation kind, one panel per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 1, figsize=(10, 4.5 * len(results)), squeeze=False)
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for axis, result in zip(axes[:, 0], results):
        for index, kind in enumerate(LAYER_KINDS):
            points = [
                (row.layer, _scaled_error(row))
                for row in result.rows
                if row.kind == kind and row.layer is not None and _scaled_error(row) is not None
            ]
            if points:
                layers, errors = zip(*points)
                axis.plot(layers, errors, marker=".", label=kind, color=colors[index % len(colors)])
        # Only the rtol part of the bound is drawn; atol and attn_probs' absolute bound are not.
        rtol = tolerance_for("resid_post", result.dtype).rtol
        axis.axhline(rtol, color="black", linestyle=":", linewidth=1, label="tolerance (rtol)")
        first = result.first_failure
        if first is not None and first.layer is not None:
            axis.axvline(first.layer, color="red", linestyle="--", linewidth=1, label=f"first failure: {first.name}")
        axis.set_yscale("log")
        axis.set_xlabel("layer")
        axis.set_ylabel("max_abs / max|reference|")
        axis.set_title(f"{result.candidate.label} vs {result.reference.label} ({result.dtype})")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to path atomically with mode 0666 & ~umask (see write_files_atomic)."""
    path = Path(path)
    write_files_atomic([(path, data)])
    return path


def _html_table(result: DiffResult) -> str:
    first = result.first_failure
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in HEADER)
    body = []
    for row in result.rows:
        if row is first:
            css = "first"
        elif row.failed:
            css = "fail"
        else:
            css = row.status
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(row, first))
        body.append(f'<tr class="{css}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _source_list(result: DiffResult) -> str:
    items = []
    for role, dump in (("reference", result.reference), ("candidate", result.candidate)):
        notes = "; ".join(f"{key}: {value}" for key, value in dump.notes.items())
        items.append(
            f"<li>{role}: <b>{html.escape(dump.label)}</b>, {html.escape(dump.implementation)} "
            f"{html.escape(dump.implementation_version)}, model {html.escape(dump.model)}, "
            f"dtype {html.escape(dump.dtype)}{(', ' + html.escape(notes)) if notes else ''}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def render_html(results: Sequence[DiffResult], plot_png: bytes | None = None) -> str:
    """Return one self-contained HTML page: sources, summary, findings, tables and the embedded plot."""
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-family:monospace;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:nth-child(2){text-align:left}"
        "tr.fail{background:#fdd}tr.first{background:#f99;font-weight:bold}tr.absent{color:#888}"
    )
    prompt = ", ".join(str(i) for i in results[0].reference.prompt_ids) if results else ""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>llama-parity diff</title><style>{style}</style></head><body>"]
    parts.append(f"<h1>llama-parity diff</h1><p>prompt ids: {html.escape(prompt)}</p>")
    if plot_png is not None:
        encoded = base64.b64encode(plot_png).decode("ascii")
        parts.append(f"<img alt='error per layer' src='data:image/png;base64,{encoded}'>")
    for result in results:
        parts.append(f"<h2>{html.escape(result.candidate.label)} vs {html.escape(result.reference.label)}</h2>")
        parts.append(_source_list(result))
        parts.append(f"<p><b>{html.escape(summary_line(result))}</b></p>")
        if result.findings:
            parts.append("<ul>" + "".join(f"<li>diagnosis: {html.escape(f)}</li>" for f in result.findings) + "</ul>")
        parts.append(_html_table(result))
    parts.append("</body></html>")
    return "\n".join(parts)
