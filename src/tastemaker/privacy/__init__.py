"""Privacy: erasure of users everywhere tastemaker keeps them, consent, log retention
(docs/privacy.md)."""

from tastemaker.privacy.consent import ConsentRegistry
from tastemaker.privacy.erasure import Eraser, ErasureReport, check_user_ids, tombstone
from tastemaker.privacy.retention import trim_log

__all__ = [
    "ConsentRegistry",
    "Eraser",
    "ErasureReport",
    "check_user_ids",
    "tombstone",
    "trim_log",
]
