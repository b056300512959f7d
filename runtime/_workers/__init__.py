"""Shards in worker processes (``FeatureRuntime(..., workers=W)``).

With ``workers >= 1`` the application's process runs a *front* (``front.py``): it reads each
event's key (of an event given as bytes, the key and time fields alone), finds its key group
with the kernel's ``KeyRouter`` (the function checkpoints split state by) and sends batches to
the worker process that owns the key group. Each worker (``worker.py``) runs a runtime of its
own, on its own event loop, over its key groups, and sends its feature updates back. Front and
worker talk over one unix socket each way, in length-prefixed msgpack frames (``protocol.py``).
"""
