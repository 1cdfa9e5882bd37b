"""Progress lines through logging: forward_log hands them to a callback without printing them twice."""

from __future__ import annotations

import logging
import threading

from streamclust.core.logs import forward_log

log = logging.getLogger("streamclust.tests")


def test_lines_reach_the_callback_once_and_root_handlers_not_at_all():
    """With logging left at WARNING (its default), a user's root handler does not get the INFO lines
    the callback prints; the logger's level and propagation are restored after."""
    package = logging.getLogger("streamclust")
    before = (package.level, package.propagate, list(package.handlers))
    got: list[str] = []
    seen: list[str] = []
    root_handler = logging.Handler()  # as logging.basicConfig() adds one: no level of its own
    root_handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger().addHandler(root_handler)
    try:
        with forward_log(got.append):
            log.info("step %d done", 1)
            log.warning("a warning")
        log.info("after the call")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert got == ["step 1 done", "a warning"] and seen == []
    assert (package.level, package.propagate, list(package.handlers)) == before


def test_configured_logging_still_sees_the_lines(caplog):
    got: list[str] = []
    with caplog.at_level(logging.INFO, logger="streamclust"), forward_log(got.append):
        log.info("visible to both")
    assert got == ["visible to both"] and [r.getMessage() for r in caplog.records] == ["visible to both"]


def test_other_threads_lines_are_not_forwarded():
    got: list[str] = []
    with forward_log(got.append):
        other = threading.Thread(target=log.info, args=("from another study",))
        other.start()
        other.join()
        log.info("mine")
    assert got == ["mine"]


def test_no_callback_changes_nothing():
    package = logging.getLogger("streamclust")
    before = (package.level, package.propagate, list(package.handlers))
    with forward_log(None):
        assert (package.level, package.propagate, list(package.handlers)) == before


def test_threads_in_a_copy_of_the_context_are_forwarded():
    """The sets a study works on at once log from threads running in copies of its context
    (core.scheduler.run_concurrently): their lines reach the callback, other threads' do not."""
    import contextvars

    got: list[str] = []
    with forward_log(got.append):
        child = threading.Thread(target=contextvars.copy_context().run, args=(log.info, "from a set"))
        child.start()
        child.join()
        stranger = threading.Thread(target=log.info, args=("from elsewhere",))
        stranger.start()
        stranger.join()
    assert got == ["from a set"]


def test_nested_forwarding_reaches_both_callbacks():
    outer: list[str] = []
    inner: list[str] = []
    with forward_log(outer.append):
        with forward_log(inner.append):
            log.info("both")
        log.info("outer only")
    assert outer == ["both", "outer only"] and inner == ["both"]
