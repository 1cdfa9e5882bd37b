"""Which Dask scheduler a run uses: threads, a LocalCluster, or a running cluster.

The one place that starts, connects to and closes ``dask.distributed`` clients.
:func:`use_scheduler` is a context manager; :func:`runs_on_scheduler` wraps an
API function (``run_study``, ``convert_case``, ``assign_new``) so that its
``scheduler=`` / ``client=`` keyword arguments select the scheduler of the whole
call.

``scheduler`` values
--------------------
``None`` (default)
    Whatever Dask is configured with: its local threaded scheduler, nothing to
    start (or a ``distributed.Client`` the caller already made the default).
``"threads"``
    Dask's local threaded scheduler, even if a default client exists.
``"local:N"`` (``"local"``: one worker per core)
    A ``LocalCluster`` of ``N`` worker processes with one thread each, started
    for the call and closed after it.
``"tcp://host:port"`` (or ``"host:port"``, ``tls://``, ``ucx://``, ``inproc://``)
    A running scheduler (``dask scheduler``); its workers must have streamclust
    installed (same version) and be able to read the store path.

Parallel passes (those that build Dask graphs or map over row blocks) run where
the scheduler puts them: on the workers when a client is active.  Sequential
passes (``partial_fit`` loops) run in the calling process, reading the blocks
themselves, so there is only ever one model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from asyncio import CancelledError
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from streamclust.errors import InputError, SchedulerError

if TYPE_CHECKING:  # distributed is an optional extra, imported on first use
    from distributed import Client

__all__ = ["SCHEDULER_HELP", "parse_scheduler", "use_scheduler", "runs_on_scheduler", "active_client",
           "computes_in_this_process",
           "shared", "map_ordered", "local_cores", "run_concurrently", "one_blas_thread"]

#: Seconds to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT = 20

_ADDRESS_PREFIXES = ("tcp://", "tls://", "ucx://", "inproc://")

#: One-paragraph explanation of ``--scheduler`` (shared by the CLI's help texts).
SCHEDULER_HELP = (
    "where the parallel passes run: 'local:N' starts N worker processes (1 thread each) for this "
    "command and stops them after; 'tcp://HOST:PORT' uses a running 'dask scheduler' whose "
    "workers have streamclust installed and can read the store path; default: Dask's threads "
    "in this process. Examples: --scheduler local:2, --scheduler tcp://10.0.0.5:8786"
)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def parse_scheduler(scheduler: str | None) -> tuple[str, int | str | None]:
    """Classify a ``scheduler`` string.

    Parameters
    ----------
    scheduler : str or None
        See the module docstring.

    Returns
    -------
    kind : {"default", "threads", "local", "address"}
    value : int, str or None
        Number of workers for ``"local"``, the address for ``"address"``.

    Raises
    ------
    InputError
        If ``scheduler`` is none of the accepted forms.
    """
    if scheduler is None:
        return "default", None
    text = str(scheduler).strip()
    if text == "threads":
        return "threads", None
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2] or str(os.cpu_count() or 1)
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"scheduler={scheduler!r}: the number of workers should be an integer "
                             ">= 1, e.g. 'local:2'.")
        return "local", int(count)
    if text.startswith(_ADDRESS_PREFIXES):
        return "address", text
    host, _, port = text.rpartition(":")
    if host and port.isdigit():
        return "address", f"tcp://{text}"
    raise InputError(f"scheduler={scheduler!r} is not a scheduler; write 'local:N' (N worker "
                     "processes), a scheduler address like 'tcp://host:8786', or 'threads'.")


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "scheduler= needs dask.distributed; install it with: pip install 'streamclust[distributed]'"
        ) from exc
    return distributed


def _gone(client: Client, exc: BaseException) -> bool:
    """True when ``exc`` means the scheduler went away (a lost worker is not: the
    scheduler reruns its tasks elsewhere)."""
    return client.status not in ("running", "newly-created") or "scheduler-connection-lost" in str(exc)


@contextlib.contextmanager
def _on_client(client: Client, what: str) -> Iterator[Client]:
    """Make ``client`` Dask's scheduler for the block; a lost cluster becomes a SchedulerError."""
    import dask

    try:
        with dask.config.set(scheduler=client), client.as_current():
            yield client
    except (Exception, CancelledError) as exc:
        if isinstance(exc, SchedulerError) or not _gone(client, exc):
            raise
        raise SchedulerError(
            f"{what}: the Dask cluster went away during the run ({type(exc).__name__}: {exc}); "
            "the work was not completed (a study run is marked failed) -- restart the scheduler and "
            "its workers and run again."
        ) from exc


@contextlib.contextmanager
def use_scheduler(scheduler: str | None = None, client: Client | None = None) -> Iterator[Client | None]:
    """Run the ``with`` block on the chosen Dask scheduler.

    Parameters
    ----------
    scheduler : str, optional
        ``None``, ``"threads"``, ``"local:N"`` or a scheduler address (module
        docstring).  A ``LocalCluster`` started here is closed on exit.
    client : distributed.Client, optional
        An existing client to use instead (left open on exit).  Give either
        ``scheduler`` or ``client``, not both.

    Yields
    ------
    distributed.Client or None
        The active client, ``None`` for the threaded scheduler.

    Raises
    ------
    SchedulerError
        The address cannot be reached, or the cluster goes away inside the block.
    """
    if client is not None:
        if scheduler is not None:
            raise InputError(f"give scheduler={scheduler!r} or client=, not both.")
        with _on_client(client, f"client={client.scheduler.address}"):
            yield client
        return
    kind, value = parse_scheduler(scheduler)
    if kind == "default":
        yield None
        return
    if kind == "threads":
        import dask

        with dask.config.set(scheduler="threads"):
            yield None
        return
    distributed = _import_distributed()
    with contextlib.ExitStack() as stack:
        if kind == "local":
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=value, threads_per_worker=1, processes=True, dashboard_address=None))
            new = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        else:
            try:
                new = distributed.Client(value, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except OSError as exc:
                raise SchedulerError(
                    f"scheduler={scheduler!r}: no Dask scheduler answered within {CONNECT_TIMEOUT} s "
                    f"({exc}); start one with 'dask scheduler' (and 'dask worker {value}' per "
                    "machine) or use 'local:N'."
                ) from exc
            stack.enter_context(new)
        with _on_client(new, f"scheduler={scheduler!r}"):
            yield new


def runs_on_scheduler(func: F) -> F:
    """Decorate an API function whose keyword-only ``scheduler`` and ``client``
    parameters choose the Dask scheduler of the whole call (:func:`use_scheduler`)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with use_scheduler(kwargs.get("scheduler"), kwargs.get("client")):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def active_client() -> Client | None:
    """The ``distributed.Client`` Dask computes on now, or ``None`` (threads, or distributed
    never imported)."""
    import sys

    import dask

    if "distributed" not in sys.modules:
        return None
    from distributed import Client, default_client

    configured = dask.config.get("scheduler", None)
    # while progress bars are on, the client's get is wrapped (streamclust.core.progress)
    configured = getattr(configured, "streamclust_client", configured)
    if isinstance(configured, Client):
        return configured
    if configured not in (None, "dask.distributed", "distributed"):  # the former: a default Client
        return None
    try:
        return cast(Client, default_client())  # default_client is unannotated
    except ValueError:
        return None


def computes_in_this_process() -> bool:
    """Whether Dask computes now run in this process (its threaded or synchronous scheduler, no
    client), so that tasks may fill an array the caller holds."""
    import dask.base
    import dask.local
    import dask.threaded

    return active_client() is None and dask.base.get_scheduler() in (None, dask.threaded.get, dask.local.get_sync)


def _identity(value: T) -> T:
    return value


def shared(obj: T, client: Client | None = None) -> Any:
    """``obj`` as an argument of many tasks: itself on threads; on a cluster, a future
    held by every worker.

    Each worker receives ``obj`` once, not with every task (a kNN detector with its
    index is ~75 MB at 100k reference rows), and before the tasks start, so that
    the scheduler does not send every task to the one worker that has it.  Unlike
    scattered data, the future is a task the scheduler can recompute if the
    workers holding it die.
    """
    client = client or active_client()
    if client is None:
        return obj
    remote = client.submit(_identity, obj, pure=False)
    try:
        client.replicate([remote])
    except (OSError, ValueError):
        # a worker died meanwhile (distributed's replicate then fails with either): copying
        # is only an optimisation, tasks still fetch ``obj`` wherever they run
        pass
    return remote


def _call(func: Callable[[Any], Any], arg: Any) -> Any:
    return func(arg)


def map_ordered(func: Callable[[Any], T], items: Iterable[tuple[Any, Any]], *,
                window: int = 4) -> Iterator[tuple[tuple[Any, Any], T]]:
    """``((key, value), func(value))`` for each pair of ``items``, in order.

    For passes that must consume an iterator in order (e.g. blocks read from a
    raw file and written to a CSV in row order).  With a client active,
    ``func`` (with the object it is bound to) reaches every worker once and
    at most ``window`` values are in flight on the workers at a time; otherwise
    ``func`` runs here, one value at a time.

    Parameters
    ----------
    func : callable ``(value) -> T``
        Picklable when a client is active.
    items : iterable of ``(key, value)``
        E.g. ``(rows, block)`` pairs of :func:`streamclust.core.blocks.iter_blocks`.
    window : int
        Values submitted ahead of the one being yielded.
    """
    client = active_client()
    if client is None:
        for item in items:
            yield item, func(item[1])
        return
    import collections

    remote = shared(func, client)
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append((item, client.submit(_call, remote, item[1], pure=False)))
        if len(pending) > window:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


_blas: dict[str, Any] = {}


def one_blas_thread() -> Any:
    """A context manager keeping BLAS (OpenBLAS, MKL) to one thread in the block, for work that is
    parallel across threads already: OpenBLAS threads contending with Dask's made GEMMs up to 7x
    slower on a 2-core machine.  ``threadpoolctl.threadpool_limits(limits=1, user_api="blas")``,
    with its scan of the loaded libraries (~5 ms once scikit-learn, scipy and numba are loaded,
    150 times in a 4-set study) done again only after new modules were imported."""
    from threadpoolctl import ThreadpoolController

    loaded = len(sys.modules)
    if _blas.get("modules") != loaded:
        _blas["controller"], _blas["modules"] = ThreadpoolController(), loaded
    return _blas["controller"].limit(limits=1, user_api="blas")


def local_cores() -> int:
    """Cores this process may run on (its CPU affinity), or 1 when a ``distributed.Client`` is
    active: then the passes run on the cluster's workers and studying pieces at once here gains
    nothing."""
    if active_client() is not None:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_concurrently(func: Callable[[Any], T], items: Sequence[Any], n_threads: int) -> list[T]:
    """``[func(item) for item in items]``, up to ``n_threads`` items at a time on threads.

    Each call runs in a copy of the caller's :mod:`contextvars` context, so the progress-bar switch,
    step timings and log forwarding of :mod:`streamclust.core.progress` / :mod:`~streamclust.core.logs`
    follow the work.  While more than one thread runs, BLAS keeps one thread per call (two
    BLAS pools on top of Dask's threads made GEMMs crawl on a 2-core machine; threadpoolctl's
    setting is process-wide, so it is set once here for all of them).  The results come back in
    the order of ``items``; the first failure (in that order) is raised once every running call has
    ended, and the calls not yet started are cancelled.

    Parameters
    ----------
    func : callable ``(item) -> T``
    items : sequence
    n_threads : int
        1 runs the calls one after another in the calling thread.

    Returns
    -------
    list of T, len(items)
    """
    if n_threads <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with one_blas_thread(), ThreadPoolExecutor(min(n_threads, len(items)), thread_name_prefix="streamclust") as pool:
        futures = [pool.submit(contextvars.copy_context().run, func, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
