"""Logging as a library does it: module loggers only; the CLI configures handlers and levels.

Under torchrun every process runs the same code; ``RankFilter`` keeps the information lines
of rank 0 alone (warnings and errors of every rank still show), without changing any logger's
level, and ``RankFilter.installed`` takes it off again when the call returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


class RankFilter(logging.Filter):
    """Drops records below WARNING on processes other than rank 0 (``RANK`` from torchrun)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or int(os.environ.get("RANK", "0")) == 0

    @classmethod
    @contextlib.contextmanager
    def installed(cls, logger: logging.Logger) -> Iterator[None]:
        """The filter on ``logger`` for the duration of the block."""
        rank_filter = cls()
        logger.addFilter(rank_filter)
        try:
            yield
        finally:
            logger.removeFilter(rank_filter)


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these libraries' loggers to WARNING (they log every pass at INFO), but for --debug
    (imagewise's own logger at DEBUG)."""
    levels = {name: logging.getLogger(name).level for name in names}
    if not logging.getLogger("imagewise").isEnabledFor(logging.DEBUG):
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
