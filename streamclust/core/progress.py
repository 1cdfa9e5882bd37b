"""Progress bars of the long passes, behind one package-wide switch.

:func:`show_progress` turns the bars on or off for the calling context (a
:class:`contextvars.ContextVar`: off by default, and off in every thread that did not turn it
on -- the read-ahead thread of :func:`~streamclust.core.blocks.iter_blocks`, Dask's worker
threads -- so only the passes a run starts itself show a bar).  :func:`progress_step` names
the bars of the passes inside it, e.g. ``"osnet: k-means 2..15"``.  While the switch is on:

- every sequential pass (:func:`~streamclust.core.blocks.iter_blocks`) shows a bar of its rows;
- every Dask computation started from the calling context (``dask.compute``, ``.compute()``,
  ``da.store``: :func:`~streamclust.core.blocks.map_blocks_reduce` and the estimators' lazy
  passes) shows a bar of its tasks: through a Dask callback on the local (threaded) scheduler,
  through the scheduler's progress feed (:class:`distributed.diagnostics.progressbar.ProgressBar`)
  when a ``distributed.Client`` is active (:func:`~streamclust.core.scheduler.active_client`).

Bars are tqdm's, on stderr, and vanish when their pass ends.  They change nothing else: the
same graphs run, on the same scheduler, and a run with the switch off installs nothing.

:func:`step_times` collects, whatever the switch, the wall and CPU seconds of every
:func:`progress_step` run inside it, by step name: ``run_study`` reports them per stage.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["show_progress", "progress_step", "progress_enabled", "progress_desc", "progress_bar", "step_times"]

logger = logging.getLogger(__name__)

_ENABLED: ContextVar[bool] = ContextVar("streamclust_progress", default=False)
_STEP: ContextVar[str | None] = ContextVar("streamclust_progress_step", default=None)
_TIMES: ContextVar[dict[str, dict[str, float]] | None] = ContextVar("streamclust_step_times", default=None)


def progress_enabled() -> bool:
    """Whether the calling context shows progress bars (:func:`show_progress`)."""
    return _ENABLED.get()


def progress_desc() -> str | None:
    """The label of the calling context's bars (:func:`progress_step`), or ``None``."""
    return _STEP.get()


def progress_bar(total: int, *, unit: str, desc: str | None = None, unit_scale: bool = False) -> Any:
    """A tqdm bar on stderr that vanishes when closed, labelled ``desc`` or by the current step."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc if desc is not None else _STEP.get(), unit=unit,
                unit_scale=unit_scale, leave=False, file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Show (or, with ``enabled=False``, hide) the progress bars of the passes run in the block.

    The setting belongs to the calling context (thread, or asyncio task) and is restored on exit;
    ``run_study(progress=...)`` enters it for the whole study.
    """
    token = _ENABLED.set(bool(enabled))
    try:
        if enabled:
            with _dask_bars():
                yield
        else:
            yield
    finally:
        _ENABLED.reset(token)


@contextlib.contextmanager
def progress_step(desc: str) -> Iterator[None]:
    """Label ``desc`` (e.g. ``"osnet: PCA"``) the bars of the passes run in the block.

    Free when the switch is off: it only sets the label (and adds its seconds to
    :func:`step_times`' record when one is open).
    """
    token = _STEP.set(desc)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        if _ENABLED.get():
            with _dask_bars():  # a client made active since show_progress gets its bars too
                yield
        else:
            yield
    finally:
        _STEP.reset(token)
        times = _TIMES.get()
        if times is not None:
            entry = times.setdefault(desc, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu
            entry["calls"] += 1


@contextlib.contextmanager
def step_times() -> Iterator[dict[str, dict[str, float]]]:
    """Record the seconds of every :func:`progress_step` run in the block (in this context).

    Yields a dict, filled as steps end: step name -> ``{"wall_s", "cpu_s", "calls"}`` summed over
    the calls of that name (``cpu_s`` is the whole process's CPU time during the step: all its
    threads).  A step nested in another counts in both.
    """
    times: dict[str, dict[str, float]] = {}
    token = _TIMES.set(times)
    try:
        yield times
    finally:
        _TIMES.reset(token)


# --------------------------------------------------------------------------- #
# Dask computations: a local-scheduler callback, a wrapper of a client's get
# --------------------------------------------------------------------------- #
_lock = threading.Lock()
_users = 0
_callback: Any = None
#: The open bar of each running local computation, by ``id`` of its scheduler state.
_task_bars: dict[int, Any] = {}


def _start_state(dsk: Any, state: dict[str, Any]) -> None:
    # called in the thread that started the computation: only its own context decides
    if _ENABLED.get():
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        _task_bars[id(state)] = progress_bar(total, unit="task")


def _posttask(key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
    bar = _task_bars.get(id(state))
    if bar is not None:
        bar.update()


def _finish(dsk: Any, state: dict[str, Any], errored: bool) -> None:
    bar = _task_bars.pop(id(state), None)
    if bar is not None:
        bar.close()


def _local_callback() -> Any:
    """The one Dask callback drawing the bars of local computations (made on first use).

    Unlike :class:`tqdm.dask.TqdmCallback` it keeps a bar per computation (computations of
    other threads may run meanwhile) and draws none for a thread whose switch is off.
    """
    global _callback
    if _callback is None:
        from dask.callbacks import Callback

        _callback = Callback(start_state=_start_state, posttask=_posttask, finish=_finish)
    return _callback


class _ClientBars:
    """A Dask scheduler function: ``client.get``, following the computation's tasks with a bar
    when the calling context shows progress.  :func:`~streamclust.core.scheduler.active_client`
    finds the client in ``streamclust_client``."""

    def __init__(self, client: Any) -> None:
        self.streamclust_client = client

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        client = self.streamclust_client
        if not _ENABLED.get():
            return client.get(dsk, keys, **kwargs)
        import asyncio

        from distributed import futures_of, wait

        packed = client.get(dsk, keys, sync=False, **kwargs)
        with _follow(client, futures_of(packed)):
            try:
                wait(packed)
            except (Exception, asyncio.CancelledError):
                pass  # the gather raises it, as without a bar
            return client.gather(packed)


@contextlib.contextmanager
def _follow(client: Any, futures: list[Any]) -> Iterator[None]:
    """A bar of every task ``futures`` depend on, while the block waits for them.

    The scheduler's progress feed (a :class:`~distributed.diagnostics.progressbar.ProgressBar`)
    runs on the client's event loop and draws the bar; the block waits for the futures
    themselves, so the computation ends when its tasks do, not at the feed's next tick.  The
    feed keeps ``futures`` (its keys on the scheduler) until it stops by itself (at its next
    tick, or when the scheduler goes away), so it is never left waiting for forgotten keys.
    A feed that fails only loses the bar.
    """
    import asyncio

    from distributed.diagnostics.progressbar import ProgressBar

    desc = progress_desc()  # the feed draws from the loop's thread, outside this context
    lock = threading.Lock()
    bar: Any = None
    stopped = False

    class _Feed(ProgressBar):
        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            nonlocal bar
            with lock:
                if stopped:
                    return
                if bar is None:
                    bar = progress_bar(all, unit="task", desc=desc)
                bar.total = all
                bar.update(all - remaining - bar.n)

    async def listen(feed: _Feed, held: list[Any]) -> None:
        try:
            await feed.listen()
        except Exception as exc:
            logger.debug(f"progress bar stopped following a computation: {type(exc).__name__}: {exc}")
        finally:
            del held  # the futures are released when the caller drops them too

    try:
        asyncio.run_coroutine_threadsafe(
            listen(_Feed(futures, scheduler=client.scheduler.address, interval="100ms"), list(futures)),
            client.loop.asyncio_loop)
    except Exception as exc:  # e.g. the client's loop is closing: no bar
        logger.debug(f"no progress bar for a computation: {type(exc).__name__}: {exc}")
    try:
        yield
    finally:
        with lock:
            stopped = True
            if bar is not None:
                bar.close()


@contextlib.contextmanager
def _client_bars() -> Iterator[None]:
    """On an active (synchronous) client, route Dask's computations through :class:`_ClientBars`."""
    import dask

    from streamclust.core.scheduler import active_client

    client = active_client()
    if (client is None or getattr(client, "asynchronous", False)
            or isinstance(dask.config.get("scheduler", None), _ClientBars)):
        yield
        return
    with dask.config.set(scheduler=_ClientBars(client)):
        yield


@contextlib.contextmanager
def _dask_bars() -> Iterator[None]:
    """Bars for the Dask computations of the block: the local callback is registered while any
    context needs it (counted: contexts of several threads may overlap)."""
    global _users
    callback = _local_callback()
    with _lock:
        if _users == 0:
            callback.register()
        _users += 1
    try:
        with _client_bars():
            yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                callback.unregister()
