"""The CPU thread policy of model forwards, so that calls stay fast when other processes compete
for the CPU, in the main thread as in worker threads.

Why: torch runs CPU ops on a GNU OpenMP team of ``torch.get_num_threads()`` threads (one per core by
default). While the process manages no more OpenMP threads than there are cores, which is the case
when only the main thread computes, libgomp lets idle team members spin-wait at every barrier for
up to ~300,000 iterations. With another busy process on the machine the spinning threads are
descheduled in turn, and every one of the hundreds of parallel regions of a forward pass waits a
scheduler time slice for them: a 12-token answer of SmolLM2 on 2 cores took 16 s in the main thread
against 1.4 s in a worker thread (whose extra team makes libgomp throttle the spinning), see
``benchmarks/thread_contention.py``.

The policy, in order:

1. ``import comprexit_rag`` before torch sets ``GOMP_SPINCOUNT=1000`` (unless it or
   ``OMP_WAIT_POLICY`` is set): the short spin libgomp itself uses once a process has more threads
   than cores, after which idle team threads sleep. A main-thread call is then as fast as a
   worker-thread one, with all cores.
2. When torch was imported first (libgomp already read its settings), :class:`ForwardLock`, the lock
   every forward pass holds (:attr:`comprexit_rag.backbone.Backbone.lock`), lowers the holding
   thread's intra-op threads to half the cores while it holds the lock: a smaller team leaves a
   core to the competitor instead of waiting for it. Torch's setting outside the library's
   forwards is left as the user set it.

``COMPREXIT_NUM_THREADS=N`` sets the threads of step 2 (``0``: leave torch's setting alone).
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType

from .errors import InvalidInputError

__all__ = ["ENV_VAR", "ForwardLock", "forward_threads", "prefer_short_spin_wait", "short_spin_wait"]

ENV_VAR = "COMPREXIT_NUM_THREADS"
SPIN_COUNT = "1000"
"""libgomp's own spin count for a process with more threads than cores (its ``throttled`` value)."""
_short_spin_before_torch = False  # whether GOMP_SPINCOUNT was set by this module before torch loaded


def prefer_short_spin_wait() -> None:
    """Ask libgomp for a short spin-wait when torch is not imported yet (step 1 of the module's policy).

    Called by ``import comprexit_rag``. Settings the user made (``GOMP_SPINCOUNT``,
    ``OMP_WAIT_POLICY``) are kept, and then step 2 applies.
    """
    global _short_spin_before_torch
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    _short_spin_before_torch = True


def short_spin_wait() -> bool:
    """Whether torch's OpenMP threads were set to spin briefly (step 1 took effect)."""
    return _short_spin_before_torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def forward_threads() -> int | None:
    """Intra-op threads for a forward pass: ``$COMPREXIT_NUM_THREADS``, else half the cores (at least 1).

    ``None`` means "leave torch's setting alone": ``COMPREXIT_NUM_THREADS=0``, or no variable and
    the short spin-wait in effect (then every core can be used without the stall).
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = -1
        if threads < 0:
            raise InvalidInputError(f"{ENV_VAR} must be a number of threads >= 0 (0: torch's own), got {value!r}.")
        return threads or None
    if short_spin_wait():
        return None
    return max(1, available_cores() // 2)


class ForwardLock:
    """A re-entrant lock whose holder runs torch's CPU ops with :func:`forward_threads` threads.

    The thread count is lowered (never raised) when the lock is first acquired and restored when
    it is finally released, in the holding thread, so concurrent callers never see each other's setting.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # re-entry depth of the owning thread
        self._restore: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        if self._depth == 0:
            try:
                wanted = forward_threads()
            except BaseException:
                self._lock.release()
                raise
            import torch  # loaded by then: the lock guards torch forwards

            current = torch.get_num_threads()
            if wanted is not None and wanted < current:
                torch.set_num_threads(wanted)
                self._restore = current
        self._depth += 1
        return True

    def release(self) -> None:
        if self._depth == 1 and self._restore is not None:
            import torch

            torch.set_num_threads(self._restore)
            self._restore = None
        self._depth -= 1
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
