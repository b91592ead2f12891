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
2. When torch was imported first (libgomp already read its settings), the first
   :class:`~comprexit_rag.backbone.Backbone` of the process lowers torch's intra-op threads to half
   the cores (:func:`apply_thread_policy`): a smaller team leaves a core to the competitor instead
   of waiting for it. This is process-wide on purpose: torch copies the setting into every thread
   that starts computing, so a setting changed per call would leak into other threads and make
   their results depend on timing. It is logged once.

``COMPREXIT_NUM_THREADS=N`` sets the threads of step 2 (``0``: leave torch's setting alone).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from .errors import InvalidInputError

__all__ = ["ENV_VAR", "apply_thread_policy", "forward_threads", "prefer_short_spin_wait", "short_spin_wait"]

logger = logging.getLogger(__name__)

ENV_VAR = "COMPREXIT_NUM_THREADS"
SPIN_COUNT = "1000"
"""libgomp's own spin count for a process with more threads than cores (its ``throttled`` value)."""
_short_spin_before_torch = False  # whether GOMP_SPINCOUNT was set by this module before torch loaded
_applied = False  # whether apply_thread_policy ran
_policy_lock = threading.Lock()


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


def apply_thread_policy() -> None:
    """Step 2 of the module's policy, once per process: lower torch's intra-op threads if needed."""
    global _applied
    with _policy_lock:
        if _applied:
            return
        wanted = forward_threads()
        _applied = True
    import torch

    current = torch.get_num_threads()
    if wanted is not None and wanted < current:
        torch.set_num_threads(wanted)
        logger.info(
            "Using %d of %d torch CPU threads: torch was imported before comprexit_rag, so OpenMP spins long at "
            "every barrier (set %s to choose, 0 to keep torch's setting; see comprexit_rag.threads).",
            wanted,
            current,
            ENV_VAR,
        )
