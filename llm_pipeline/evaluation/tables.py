"""The cell and table types every report section is built from, and the two number formats they use.

Kept apart from report.py so the section builders of other modules (report_checks.py) can use them without an
import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cell:
    text: str
    cls: str = ""  # "better" | "worse" | "flag" | "ok" | "" (styling in HTML, a marker in markdown)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell | str]]


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"
