"""Progress lines: every layer logs to :mod:`logging` under the ``streamclust`` logger; an API
call that takes a ``log`` callback (e.g. :func:`~streamclust.study.run_study`) forwards them to it
while it runs (the CLI prints them that way)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["PACKAGE_LOGGER", "forward_log"]

#: The parent of every module's logger (``logging.getLogger(__name__)``).
PACKAGE_LOGGER = "streamclust"


#: The handlers of the :func:`forward_log` blocks the calling context is in (a thread, or a copy of
#: its context such as the threads of :func:`~streamclust.core.scheduler.run_concurrently`).
_FORWARDING: ContextVar[frozenset[logging.Handler]] = ContextVar("streamclust_forward_log", default=frozenset())


class _CallbackHandler(logging.Handler):
    """Hands the messages of the records logged in one context to a callback (handlers run in the
    logging thread, so the filter sees that thread's context)."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback
        self.addFilter(lambda record: self in _FORWARDING.get())

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record.getMessage())


@contextlib.contextmanager
def forward_log(callback: Callable[[str], None] | None) -> Iterator[None]:
    """While inside, the INFO (and higher) records the calling thread logs under ``streamclust``
    also reach ``callback(message)``; nothing changes when ``callback`` is None.

    When logging is not configured to show streamclust's INFO records (the default: WARNING), the
    ``streamclust`` logger is lowered to INFO for the call and kept from propagating, so those
    records reach the callback only, not also the root logger's handlers; both are restored after.
    Records of other threads (another study running at the same time) are not forwarded, but
    those of threads running in a copy of the calling context are (the sets a study works on at once).
    """
    if callback is None:
        yield
        return
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _CallbackHandler(callback)
    level, propagate = logger.level, logger.propagate
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logger.addHandler(handler)
    token = _FORWARDING.set(_FORWARDING.get() | {handler})
    try:
        yield
    finally:
        _FORWARDING.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
