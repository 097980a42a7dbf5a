"""Computing ahead: a one-off run's results, computed while Prefect starts.

A one-off `gdflow run` spends its first seconds on one core: importing Prefect, booting or
reaching the server, creating the flow run. When the run has something to compute (no figure
yet for its parameters), the command forks a helper process before all that; the helper
computes in memory what the run's tasks will compute: the synthetic data set, each method's
history, the figure. When a task runs, it asks for its result by a digest of its actual inputs
(the data it loaded, the histories it read): on a match it takes the result, and says so in its
log; otherwise it computes as usual. The tasks still write every file, publish every artifact
and keep their caching. Runs started any other way (deployments, workers, serving, a flow
called from Python) have no helper and compute in the task.

Only small runs are computed ahead (see _small), on Linux; GDFLOW_AHEAD=0 turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from tasks import keys
from tasks.params import MethodSpec, RunParams
from tasks.paths import dataset_path, report_name, reports_dir, resolve_data_dir

if TYPE_CHECKING:  # numpy and the rest load in the helper: the command forks before them
    from multiprocessing.connection import Connection

    import numpy as np

    from tasks.dataset import DatasetRef
    from tasks.history import History
    from tasks.stats import Moments

AHEAD_MAX_ROWS = 1 << 20
AHEAD_MAX_VISITS = 20_000_000  # rows x epochs
QUIET_LIMIT_S = 60.0  # a helper silent this long is taken for stuck: the tasks compute instead
SWITCH_ENV = "GDFLOW_AHEAD"  # "0": no helper, every task computes its own result
FIGURE_INPUTS = "figure-inputs.json"  # beside a report's figures: what they were drawn from


@dataclass
class Trained:
    """A history computed ahead, and the progress its training reported on the way."""

    history: History
    ticks: list[tuple[int, float]]


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _array(a: Any) -> bytes:
    import numpy as np

    a = np.ascontiguousarray(a)
    return a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()


def _moments(stats: Moments) -> str:
    return json.dumps({k: repr(float(v)) for k, v in asdict(stats).items()}, sort_keys=True)


def history_key(x: np.ndarray, y: np.ndarray, stats: Moments, spec: MethodSpec) -> str:
    """The digest of everything one method's training depends on."""
    return _digest(
        "history", _array(x), _array(y), _moments(stats), spec.model_dump_json(), keys.CODE_VERSION
    )


def figure_key(
    histories: list[History],
    preview_x: np.ndarray,
    preview_y: np.ndarray,
    stats: Moments,
    slope: float | None,
    intercept: float | None,
    caption: str,
) -> str:
    """The digest of everything the comparison figure is drawn from."""
    import numpy as np

    parts: list[bytes | str] = ["figure"]
    for h in histories:
        for f in fields(h):
            if f.name != "extra":  # file metadata, not drawn
                value = getattr(h, f.name)
                if isinstance(value, np.ndarray):
                    parts.append(_array(value))
                else:  # a numpy scalar and the Python number it equals give one text
                    parts.append(repr(value.item() if isinstance(value, np.generic) else value))
    parts += [
        _array(np.asarray(preview_x, dtype=float)),
        _array(np.asarray(preview_y, dtype=float)),
    ]
    parts += [_moments(stats), repr(slope), repr(intercept), caption]
    return _digest(*parts)


# --- the helper process ------------------------------------------------------------------------


def _small(params: RunParams) -> bool:
    """Synthetic data, the fast engine on the CPU, and little enough work to finish in about a
    second (longer training reports its progress live, from its own task)."""
    return (
        not params.data
        and params.device == "cpu"
        and params.engine == "fast"
        and params.n_samples <= AHEAD_MAX_ROWS
        and params.n_samples * params.epochs <= AHEAD_MAX_VISITS
    )


def worth_computing(params: RunParams) -> bool:
    """Whether a run of `params` will compute something a helper can do ahead.

    A repeated run finds its figure drawn for its parameters (and so its data and histories
    cached): it computes nothing, and a helper would only take CPU from it.
    """
    if not _small(params):
        return False
    if params.refresh:
        return True
    data_dir = resolve_data_dir(params.data_dir)
    drawn = reports_dir(data_dir) / report_name(params) / FIGURE_INPUTS
    return not (dataset_path(data_dir, params.data_spec()).is_file() and drawn.is_file())


def _compute(params: RunParams, conn: Connection) -> None:
    """The helper's work. It sends ("plan", kind, keys) before the results of a kind, then
    ("history", key, Trained) per method and ("figure", key, (png, svg))."""
    import numpy as np

    from tasks.dataset import Summary, describe, generate_chunks
    from tasks.reporting import build_figure, caption
    from tasks.training import train_stored

    spec = params.data_spec()
    n = spec.n_samples
    summary = Summary(n)
    xs, ys = [], []
    for x, y in generate_chunks(spec):
        summary.add(x, y)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    stats = summary.moments.result()
    specs = [params.method_spec(method, n) for method in params.methods]
    history_keys = [history_key(x, y, stats, s) for s in specs]
    conn.send(("plan", "history", history_keys))
    histories = []
    for method_spec, key in zip(specs, history_keys, strict=True):
        ticks: list[tuple[int, float]] = []

        def tick(epoch: int, loss: float, ticks: list[tuple[int, float]] = ticks) -> None:
            ticks.append((epoch, loss))

        history = train_stored(n, lambda: [(x, y)], lambda: (x, y), method_spec, stats, tick)
        conn.send(("history", key, Trained(history, ticks)))
        histories.append(history)
    preview_x, preview_y = summary.preview()
    text = caption(params, describe(spec))
    slope, intercept = params.slope, params.intercept
    key = figure_key(histories, preview_x, preview_y, stats, slope, intercept, text)
    conn.send(("plan", "figure", [key]))
    figure = build_figure(
        histories,
        preview_x,
        preview_y,
        stats,
        true_slope=slope,
        true_intercept=intercept,
        caption=text,
    )
    conn.send(("figure", key, _png_and_svg(figure)))


def _png_and_svg(figure: Any) -> tuple[bytes, bytes]:
    """The figure as PNG, drawn here, and as SVG, drawn side by side in a forked process; both
    from one layout."""
    from tasks.reporting import figure_bytes, lay_out

    lay_out(figure)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # draws the SVG
        os.close(read_end)
        try:
            _die_with_parent()
            with os.fdopen(write_end, "wb") as out:
                out.write(figure_bytes(figure, "svg"))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        png = figure_bytes(figure, "png")
        svg = _read_all(read_end, QUIET_LIMIT_S / 2)
    finally:
        os.close(read_end)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # done already, or stuck
        os.waitpid(pid, 0)
    return png, svg or figure_bytes(figure, "svg")  # nothing came: draw it here


def _read_all(fd: int, seconds: float) -> bytes:
    """Everything written to pipe `fd` until its writer closes it; b"" after `seconds`."""
    import select

    deadline = time.monotonic() + seconds
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return b""


def _die_with_parent() -> None:
    """Have the kernel end this process when the command ends, however it ends (SIGKILL too)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the command ended before that took effect
        os._exit(0)


def _helper_main(params: RunParams, conn: Connection, parents_end: Connection) -> None:
    parents_end.close()  # else a send could wait forever on a reader that is gone
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # the terminal is the command's too
    os.dup2(quiet, 2)
    try:
        _compute(params, conn)
    except BaseException:  # only a head start: whatever is not sent, the task computes
        pass
    finally:
        try:
            conn.send(("done", "", None))
        finally:
            os._exit(0)  # nothing of the parent's to tear down here


class Ahead:
    """The command's side of a helper: results by key, as the helper sends them."""

    def __init__(self, process: Any, conn: Connection) -> None:
        self._process = process
        self._conn = conn
        self._plans: dict[str, set[str]] = {}
        self._results: dict[tuple[str, str], Any] = {}
        self._done = False
        self._cond = threading.Condition()
        threading.Thread(target=self._receive, name="gdflow-ahead", daemon=True).start()

    def _receive(self) -> None:
        try:
            while True:
                kind, key, value = self._conn.recv()
                if kind == "done":
                    break
                with self._cond:
                    if kind == "plan":
                        self._plans[key] = set(value)
                    else:
                        self._results[kind, key] = value
                    self._cond.notify_all()
        except (EOFError, OSError):  # the helper died: what it did not send never comes
            pass
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def take(self, kind: str, key: str) -> Any | None:
        """The result of `kind` for `key`; waits only while the helper may still send it."""
        with self._cond:
            while (kind, key) not in self._results:
                plan = self._plans.get(kind)
                if self._done or (plan is not None and key not in plan):
                    return None
                if not self._cond.wait(QUIET_LIMIT_S):  # nothing came: do not wait for it
                    self._done = True
                    return None
            return self._results.pop((kind, key))

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()


_current: Ahead | None = None


def start(params: RunParams) -> bool:
    """Fork a helper to compute ahead for a one-off run of `params`, if it is worth it (see
    worth_computing); returns whether it did.

    Only where forking is safe: on Linux, from a process with no other threads and none of
    numpy's (BLAS) threads yet.
    """
    global _current
    if _current is not None or os.environ.get(SWITCH_ENV) == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    if threading.active_count() != 1 or "numpy" in sys.modules or not worth_computing(params):
        return False
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_helper_main, args=(params, sender, receiver), daemon=True)
    process.start()
    sender.close()
    _current = Ahead(process, receiver)
    return True


def stop() -> None:
    """End the helper, if any (it has nothing to save)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def trained(dataset: DatasetRef, spec: MethodSpec) -> Trained | None:
    """The history of `spec` on `dataset`, if the helper computed it from the same inputs."""
    if _current is None or dataset.file.rows > AHEAD_MAX_ROWS:
        return None
    from tasks.dataset import load_columns

    x, y = load_columns(dataset.file, dataset.x_col, dataset.y_col)
    return _current.take("history", history_key(x, y, dataset.stats(), spec))


def drawn(
    histories: list[History],
    preview_x: np.ndarray,
    preview_y: np.ndarray,
    stats: Moments,
    slope: float | None,
    intercept: float | None,
    caption: str,
) -> tuple[bytes, bytes] | None:
    """The figure (PNG, SVG) of these inputs (see figure_key), if the helper drew it."""
    if _current is None:
        return None
    key = figure_key(histories, preview_x, preview_y, stats, slope, intercept, caption)
    return _current.take("figure", key)
