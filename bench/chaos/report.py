"""The chaos run's rows on the console (a rich table and the same as Markdown) and in the results file."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from bench.chaos.cli import console
from bench.chaos.faults import FAULTS


def _s(value: dict[str, Any], digits: int = 2, never: str = "never") -> str:
    """``median (max)`` of a spread; ``never`` for runs that did not get there."""
    if value["median"] is None:
        return never if value["missing"] else "-"
    text = f"{value['median']:.{digits}f}"
    if value["max"] is not None and value["max"] != value["median"]:
        text += f" ({value['max']:.{digits}f})"
    if value["missing"]:
        text += f", {value['missing']} {never}"
    return text


def _n(value: dict[str, Any]) -> str:
    if value["median"] is None:
        return "-"
    text = f"{value['median']:g}"
    return text + (f" ({value['max']:g})" if value["max"] != value["median"] else "")


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


def _spare(row: dict[str, Any]) -> str:
    used = [x for x in row["from_spare"] if x is not None]
    if not used:
        return "-"
    return "spare" if all(used) else ("boot" if not any(used) else f"{sum(used)} of {len(used)} spare")


COLUMNS = ("load balancer", "fault", "new conn. failure window s", "failed new conn.",
           "long-lived ended on the failed amphora, of N", "long-lived broken elsewhere (closed)",
           "full strength s", "replacement listed s", "<= 0.35 s", "none broken elsewhere", "< 10 s")


def cells(row: dict[str, Any], verdict: dict[str, Any]) -> list[str]:
    if row["errors"] == row["repeats"]:
        return [row["target"], FAULTS[row["fault"]][0], "error", *[""] * (len(COLUMNS) - 3)]
    listed = _s(row["replacement_listed_s"], never="none")
    return [row["target"], FAULTS[row["fault"]][0], _s(row["window_s"], 3),
            f"{_n(row['failed'])} of ~{row['attempts']['median']:,.0f}" if row["attempts"]["median"] else "-",
            f"{_n(row['ended_on_failed'])} of {row['connections']['median']:g}"
            if row["connections"]["median"] is not None else "-",
            f"{_n(row['broken_elsewhere'])} ({_n(row['closed_elsewhere'])})",
            _s(row["full_strength_s"], 1) + (" (link held)" if row["healed_while_down"]
                                              and not any(row["healed_while_down"]) else ""),
            listed if listed == "-" or _spare(row) == "-" else f"{listed} {_spare(row)}",
            _yes(verdict.get("window_le_0.35s")), _yes(verdict.get("none_broken_elsewhere")),
            _yes(verdict.get("full_strength_lt_10s"))]


def print_report(report: dict[str, Any]) -> None:
    verdicts = {(v["fault"], v["target"]): v for v in report["targets"]["rows"]}
    table = Table(title=f"chaos: medians of {report['parameters']['repeats']} (max in brackets)")
    for column in COLUMNS:
        table.add_column(column)
    for row in report["rows"]:
        table.add_row(*(c.replace("**", "") for c in cells(row, verdicts.get((row["fault"], row["target"]), {}))))
    console.print(table)
    console.print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    verdicts = {(v["fault"], v["target"]): v for v in report["targets"]["rows"]}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row, verdicts.get((row["fault"], row["target"]), {}))) + " |"
              for row in report["rows"]]
    return "\n".join(lines)
