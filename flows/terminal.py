"""What gdflow shows on the terminal: the tables of results and the trainings' progress bars.

Once a training has worked long enough to report its progress, the training task
(tasks.steps.training.ProgressReport) attaches its figures to its progress log records; a handler on
Prefect's task-run logger draws them as bars, for the trainings a command runs in its own
process. A bar goes when its training ends.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cyclopts import CycloptsError, UnusedCliTokensError
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from flows.cache_listing import Area, format_age, format_size
from tasks.errors import BrokenEnvironment


def stdout() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=120)  # no squeezing when piped


def print_run(result: Any, title: str, table_of: str | None) -> None:
    """A run's results table, its divergences, its figure and, if asked, one method's history."""
    table = Table(title=f"gd-comparison · {title}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("method", "step", "final loss", "w", "b", "updates", "time (s)", "status"):
        justify = "left" if column in ("method", "status") else "right"
        table.add_column(column, justify=justify, no_wrap=True)
    for name, m in result.methods.items():
        status = Text("diverged", "red") if m.diverged else Text("converged", "green")
        fitted = (f"{v:.4g}" for v in (m.final_loss, m.final_w, m.final_b))
        table.add_row(name, f"{m.lr:g}", *fitted, f"{m.updates:,}", f"{m.wall_time_s:.3f}", status)
    out = stdout()
    out.print(table)
    for name, m in result.methods.items():
        if m.diverged:
            out.print(Text.assemble((f"{name} diverged:", "red"), f" {m.reason}"), soft_wrap=True)
    print(f"Figure: {result.figure}")
    if not table_of:
        return
    # The tutorial's table of one method. pyarrow, loaded here: a request refused for its
    # options never waits for it (0.3 s).
    from tasks.history import read_history
    from tasks.storage import read_manifest

    history = result.methods[table_of].history
    record = read_manifest(Path(history))
    if record is None:
        raise BrokenEnvironment(f"the history of {table_of} is gone from {history}; run again")
    h = read_history(record)
    print(f"{table_of}: epoch, loss at its start, w and b at its end")
    for i in range(h.epochs):
        print(f"{i}, {float(h.loss[i])!r}, {float(h.w[i + 1])!r}, {float(h.b[i + 1])!r}")


def runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def print_sweep(result: Any, title: str) -> None:
    """A sweep's best step size per batch size, its counts and its files."""
    title = f"gd-sweep · {title} · best step size per batch size"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    columns = ("batch", "method", "best step", "loss − floor", "epochs to target", "bound")
    for column in (*columns, "diverged at"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for b in result.best:
        found = b["best_lr"] is not None
        table.add_row(
            f"{b['batch_size']:,}",
            b["method"],
            f"{b['best_lr']:g}" if found else Text("all diverged", "red"),
            f"{b['excess_loss']:.3g}" if found else "",
            "not reached" if b["epochs_to_target"] is None else f"{b['epochs_to_target']:g}",
            f"{b['stability_bound']:.3g}",
            ", ".join(f"{lr:g}" for lr in b["diverged_lrs"]) or "none",
        )
    stdout().print(table)
    print(f"{runs(result.cells)} ({result.cached} from the cache), {result.diverged} diverged")
    print(f"Figure: {result.figure}\nAll histories: {result.histories}")


def print_areas(areas: dict[str, Area]) -> None:
    """The cache's entries, size and oldest age per area, and their total."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("area", "entries", "size", "oldest"):
        table.add_column(column, justify="left" if column == "area" else "right")
    for name, a in areas.items():
        table.add_row(name, f"{a.entries:,}", format_size(a.bytes), format_age(a.oldest_s))
    entries = sum(a.entries for a in areas.values())
    size = sum(a.bytes for a in areas.values())
    table.add_row("total", f"{entries:,}", format_size(size), "")
    stdout().print(table)


class ProgressBars(logging.Handler):
    """Draws one bar per training task run from the progress records of the task-run logger:
    those that carry the figures in their attribute `field`."""

    def __init__(self, field: str) -> None:
        super().__init__()
        self.field = field
        self.display = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bars: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        progress: dict[str, Any] | None = getattr(record, self.field, None)
        if progress is None:
            return
        training = str(getattr(record, "task_run_id", ""))
        epoch, epochs = progress["epoch"], progress["epochs"]
        # logging.Handler.handle calls this under the handler's own lock: one record at a time
        if training not in self.bars:
            if not self.bars:
                self.display.start()
            label = f"{getattr(record, 'task_run_name', 'training')} ({epochs} epochs)"
            self.bars[training] = self.display.add_task(label, total=epochs, loss="…")
        bar = self.bars[training]
        self.display.update(bar, completed=epoch, loss=f"{progress['loss']:.4g}")
        if epoch >= epochs:
            self.display.remove_task(self.bars.pop(training))
            if not self.bars:
                self.display.stop()

    def close(self) -> None:
        self.display.stop()  # a run that failed mid-training leaves no bar behind
        super().close()


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Bars on stderr, if `shown` and stderr is a terminal, while the block runs."""
    if not (shown and sys.stderr.isatty()):
        yield
        return
    from tasks.steps.training import PROGRESS_FIELD  # Prefect: loaded with the run the bars show

    logger = logging.getLogger("prefect.task_runs")
    handler = ProgressBars(PROGRESS_FIELD)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def _value(value: Any) -> str:
    """A parameter or result on the terminal: 4 significant digits, lists comma-separated."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _final_loss(result: dict[str, Any] | None) -> Text | str:
    if result is None:
        return ""
    loss = "overflow" if result["final_loss"] is None else f"{result['final_loss']:.4g}"
    return Text(loss, "red") if result["diverged"] else loss


def print_runs(records: list[Any]) -> None:
    """Recorded runs, newest first: when, which, and each method's final loss (red: diverged)."""
    methods = list(dict.fromkeys(m for r in records for m in r.methods))
    title = "Recorded runs, newest first, and the final loss of each method"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("time (UTC)", "run", "id", "deployment"):
        table.add_column(column, no_wrap=True)
    for method in methods:
        table.add_column(method, justify="right", no_wrap=True)
    for r in records:
        losses = (_final_loss(r.methods.get(m)) for m in methods)
        table.add_row(f"{r.time:%Y-%m-%d %H:%M}", r.name, r.id[:8], r.deployment or "", *losses)
    stdout().print(table)


RESULT_ROWS = (
    ("lr", "step size"),
    ("final_loss", "final loss"),
    ("excess_loss", "excess over least sq."),
    ("w", "w"),
    ("b", "b"),
    ("diverged", "diverged"),
    ("updates", "updates"),
    ("wall_time_s", "time (s)"),
)


def print_comparison(a: Any, b: Any, differing: list[str]) -> None:
    """Two recorded runs side by side: which runs, the parameters that differ, the results."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", a.name, b.name):
        table.add_column(column, no_wrap=True)
    table.add_row("id", a.id, b.id)
    table.add_row("time (UTC)", f"{a.time:%Y-%m-%d %H:%M:%S}", f"{b.time:%Y-%m-%d %H:%M:%S}")
    table.add_row("deployment", a.deployment or "", b.deployment or "")
    table.add_row("params digest", a.params_digest, b.params_digest, end_section=True)
    for name in differing:
        table.add_row(name, _value(a.params.get(name)), _value(b.params.get(name)), style="bold")
    out = stdout()
    out.print(table)
    out.print(f"Parameters that differ: {', '.join(differing) or 'none'}")
    results = Table(box=box.SIMPLE_HEAD)
    for column in ("method", "", a.name, b.name):
        results.add_column(column, justify="left" if column in ("method", "") else "right")
    for method in dict.fromkeys([*a.methods, *b.methods]):
        one, two = a.methods.get(method, {}), b.methods.get(method, {})
        for key, label in RESULT_ROWS:
            results.add_row(method, label, _value(one.get(key)), _value(two.get(key)))
        results.add_section()
    out.print(results)


def describe_usage_error(exc: CycloptsError) -> str:
    """One line for a command line cyclopts could not parse, pointing to the command's help."""
    if isinstance(exc, UnusedCliTokensError) and exc.unused_tokens:
        tokens = " ".join(exc.unused_tokens)
        message = f"unexpected {tokens!r}: an option takes one value (lists: a,b,c), a flag none"
    else:
        message = " ".join(str(exc).split()).rstrip(".")
    command = " ".join(["gdflow", *(exc.command_chain or [])])
    return f"{message[:1].lower()}{message[1:]}; see `{command} --help`"
