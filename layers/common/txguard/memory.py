"""The cyclic garbage collector, paused while a bounded piece of work allocates many objects that form no cycles."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collection_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for the block (left as it was after: a nested pause changes nothing).

    A request of 5,000 transactions, a batch decided as columns, a generated month or an imported list allocate
    tens of thousands to millions of objects (transactions, decisions, reasons, rows, JSON) that reference
    counting frees and that form no cycles; each collection those allocations set off walks the young objects
    again, and each full one every tracked object of the process (about 160,000 in a warm ingest function, 0.1 to
    0.2 s each here). With the collector running, deciding 20,000 transactions spent about a sixth of its CPU in it
    (`make bench ARGS='--only model'`), and a 5,000-transaction batch through the ingest handler about a fifth of
    its time (`make bench ARGS='--only ingest'`, empty rule set). Memory stays bounded by the block's own work; a
    cycle it does make is collected after it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
