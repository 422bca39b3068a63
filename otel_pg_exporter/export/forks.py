"""What a forked child does with the exporters it inherited: the package's one fork hook.

A child process (multiprocessing, gunicorn, Celery workers) inherits its parent's exporter
objects but not their threads, and must never use the parent's connections or file locks.
Objects register here when they are created; in the child, ``after_fork_in_child()`` runs on
each, in layers: spools first (forget the parent's segments and locks), then writers (forget
the parent's connection pool without closing it), then exporters (start a fresh sender and
replay thread, which use the two layers below).

Process state: three weak sets, so registering keeps nothing alive.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ResetAfterFork(Protocol):
    def after_fork_in_child(self) -> None: ...


_LAYERS: tuple[weakref.WeakSet[ResetAfterFork], ...] = (
    weakref.WeakSet(),  # spools
    weakref.WeakSet(),  # writers
    weakref.WeakSet(),  # exporters
)
SPOOLS, WRITERS, EXPORTERS = range(3)


def reset_in_child(layer: int, owner: ResetAfterFork) -> None:
    """Call ``owner.after_fork_in_child()`` in every child forked from now on."""
    _LAYERS[layer].add(owner)


def _after_fork_in_child() -> None:
    for layer in _LAYERS:
        for owner in list(layer):
            owner.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
