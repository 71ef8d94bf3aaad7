"""The continual-learning report: the accuracy matrix R (row i: after training stage i; column j: task j) and
its summaries.

- average accuracy ACC = mean_j R[T-1, j] (Lopez-Paz & Ranzato 2017);
- backward transfer BWT = mean_{j<T-1} (R[T-1, j] - R[j, j]): negative when later tasks erase earlier ones;
- forward transfer FWT = mean_{j>0} (R[j-1, j] - b_j), given each task's accuracy b_j before any training;
- forgetting F = mean_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j]) (Chaudhry et al. 2018): the drop from the best
  accuracy a task ever had.

A matrix built over successive runs may hold None above the diagonal (a task not yet known when an earlier run
ended); those entries are left out of the maxima and forward transfer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ContinualReport:
    tasks: list[str]
    matrix: list[list[float | None]]
    average_accuracy: float
    backward_transfer: float | None
    forgetting: float | None
    per_task_forgetting: list[float]
    forward_transfer: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def to_markdown(self, digits: int = 1) -> str:
        """The matrix as a Markdown table (percentages) followed by the summary numbers."""
        pct = f"{{:.{digits}f}}"
        lines = ["| after stage | " + " | ".join(self.tasks) + " |", "|---" * (len(self.tasks) + 1) + "|"]
        for i, row in enumerate(self.matrix):
            cells = ("–" if v is None else pct.format(100 * v) for v in row)
            lines.append(f"| {i + 1}: {self.tasks[i]} | " + " | ".join(cells) + " |")
        summary = [f"average accuracy {pct.format(100 * self.average_accuracy)}%"]
        if self.backward_transfer is not None:
            assert self.forgetting is not None  # both summarise the earlier tasks: set together
            summary.append(f"backward transfer {100 * self.backward_transfer:+.{digits}f} pp")
            summary.append(f"forgetting {pct.format(100 * self.forgetting)} pp")
        if self.forward_transfer is not None:
            summary.append(f"forward transfer {100 * self.forward_transfer:+.{digits}f} pp")
        return "\n".join(lines) + "\n\n" + "; ".join(summary) + "\n"


def continual_report(
    tasks: list[str], matrix: list[list[float | None]], baseline: list[float] | None = None
) -> ContinualReport:
    """Summaries of a square accuracy matrix (one training stage per task, in task order; entries above the
    diagonal may be None)."""
    t = len(tasks)
    if len(matrix) != t or any(len(row) != t for row in matrix):
        raise ValueError(f"the accuracy matrix must be {t} x {t} (stages x tasks)")
    lower = [[v for v in row[: i + 1] if v is not None] for i, row in enumerate(matrix)]  # on and below the diagonal
    if any(len(row) != i + 1 for i, row in enumerate(lower)):
        raise ValueError("the accuracy matrix needs every entry on and below the diagonal")
    last = lower[-1]
    acc = sum(last) / t
    earlier = range(t - 1)
    per_task = [max(v for row in matrix[:-1] if (v := row[j]) is not None) - last[j] for j in earlier]
    bwt = sum(last[j] - lower[j][j] for j in earlier) / (t - 1) if t > 1 else None
    forgetting = sum(per_task) / (t - 1) if t > 1 else None
    fwt = None
    before = [v for j in range(1, t) if (v := matrix[j - 1][j]) is not None]  # each task just before its own stage
    if baseline is not None and t > 1 and len(before) == t - 1:
        fwt = sum(v - baseline[j] for j, v in enumerate(before, start=1)) / (t - 1)
    return ContinualReport(list(tasks), [list(r) for r in matrix], acc, bwt, forgetting, per_task, fwt)
