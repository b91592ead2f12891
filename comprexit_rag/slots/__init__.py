"""Slots once computed: their keys, the crash-safe store on disk, the in-memory cache and the service.

``SlotService`` is what callers use ("the slots of these texts"); it reads and writes a ``SlotStore``
or a ``MemorySlotCache`` under keys and fingerprints made in :mod:`.keys`.
"""

from .cache import MemorySlotCache
from .keys import content_key, query_key, store_fingerprint
from .service import SlotLookup, SlotService
from .store import DISK_DTYPE, SlotStore

__all__ = [
    "DISK_DTYPE",
    "MemorySlotCache",
    "SlotLookup",
    "SlotService",
    "SlotStore",
    "content_key",
    "query_key",
    "store_fingerprint",
]
