"""Number formatting and the three table formats (CSV, Markdown, LaTeX booktabs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import write_text

MISSING = "–"
MAX_DECIMALS = 8
CSV_BEST = " *"  # CSV has no bold: the best cell ends with this mark (the caption says so)


def _decimals_for(value: float, significant: int) -> int:
    if value == 0 or not math.isfinite(value):
        return 0
    return min(MAX_DECIMALS, max(0, significant - 1 - math.floor(math.log10(abs(value)))))


def number(value: float, significant: int = 4) -> str:
    """A single value with `significant` significant digits, never in scientific notation."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{_decimals_for(value, significant)}f}"


def mean_std(mean: float, std: float, n: int, n_expected: int | None = None) -> str:
    """'mean ± std' with the std to 2 significant digits and the mean to the same decimals; a
    single seed (or no spread) shows the mean alone at 4 significant digits. '(n=k)' flags a cell
    with fewer seeds than the table's others."""
    if mean is None or not math.isfinite(mean):
        return MISSING
    if n < 2 or not math.isfinite(std):
        text = number(mean)
    elif std <= 1e-9 * max(abs(mean), 1.0):  # no spread up to float rounding
        text = f"{number(mean)} ± 0"
    else:
        d = _decimals_for(std, 2)
        text = f"{mean:.{d}f} ± {std:.{d}f}"
    if n_expected is not None and n < n_expected:
        text += f" (n={n})"
    return text


def p_value(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class Table:
    """A table ready to write: display strings (the first `labels` columns label the rows),
    which cells are best, a title and a note (what the marks mean, seeds, extractor)."""

    title: str
    note: str
    text: pd.DataFrame
    best: pd.DataFrame  # bool, same shape and columns as `text`
    labels: int = 1

    def csv(self) -> pd.DataFrame:
        return self.text.where(~self.best, self.text + CSV_BEST)

    def markdown(self) -> str:
        cells = self.text.where(~self.best, "**" + self.text + "**")
        body = cells.to_markdown(index=False, disable_numparse=True)
        return f"**{self.title}**\n\n{body}\n\n{self.note}\n"

    def latex(self) -> str:
        cells = self.text.map(latex_escape)
        cells = cells.where(~self.best, "\\textbf{" + cells + "}")
        align = "l" * self.labels + "r" * (len(self.text.columns) - self.labels)
        lines = [f"% {latex_escape(self.title)}", f"% {latex_escape(self.note)}",
                 f"\\begin{{tabular}}{{{align}}}",
                 "\\toprule",
                 " & ".join(latex_escape(str(c)) for c in self.text.columns) + " \\\\",
                 "\\midrule"]
        lines += [" & ".join(row) + " \\\\" for row in cells.itertuples(index=False)]
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)

    def write(self, out: str | Path) -> list[Path]:
        """Write out.csv, out.md and out.tex (each atomically); return the three paths."""
        out = Path(out)
        paths = [out.with_name(out.name + ext) for ext in (".csv", ".md", ".tex")]
        write_text(paths[0], self.csv().to_csv(index=False))
        write_text(paths[1], self.markdown())
        write_text(paths[2], self.latex())
        return paths


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
          "Δ": r"$\Delta$", "–": "--", "−": "-", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))
