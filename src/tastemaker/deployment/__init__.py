"""The wiring of a whole deployment: one process's `Runtime` (log, store, catalog, stream
worker, recommend pipeline, offline scheduler, artifact watcher), the guards around its
backends, and the services that reach every part at once (erasure, evaluation)."""

from tastemaker.deployment.runtime import ItemsError, Runtime, freeze_loaded_heap

__all__ = ["ItemsError", "Runtime", "freeze_loaded_heap"]
