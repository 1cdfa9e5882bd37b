"""Progress lines: every layer logs to :mod:`logging` under the ``streamclust`` logger; an API
call that takes a ``log`` callback (e.g. :func:`~streamclust.study.run_study`) forwards them to it
while it runs (the CLI prints them that way)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

__all__ = ["PACKAGE_LOGGER", "forward_log"]

#: The parent of every module's logger (``logging.getLogger(__name__)``).
PACKAGE_LOGGER = "streamclust"


class _CallbackHandler(logging.Handler):
    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record.getMessage())


@contextlib.contextmanager
def forward_log(callback: Callable[[str], None] | None) -> Iterator[None]:
    """While inside, the INFO (and higher) records of the ``streamclust`` loggers also reach
    ``callback(message)``; nothing changes when ``callback`` is None."""
    if callback is None:
        yield
        return
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _CallbackHandler(callback)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
