"""A worker as a Ray actor (``backend="ray"``).

Ray imports this module in the actor's process (the class is made a Ray actor by
``ray.remote(RayWorker)`` in the front's process, and pickled by reference). The actor's one
call, :meth:`RayWorker.serve`, connects back to the front, proves itself with the front's
token, and runs the worker's loop (:func:`.worker.serve`, the same as in a local worker
process) on an event loop of its own until the worker stops; then the actor exits.
"""

from __future__ import annotations

import os

from actors import run

from .protocol import connect_back
from .worker import WorkerSpec, serve

__all__ = ["RayWorker"]


class RayWorker:
    """The worker actor: no state of its own beyond what :meth:`serve` runs."""

    def serve(self, host: str, port: int, token: bytes, spec: WorkerSpec) -> int:
        """Run worker ``spec.index`` for the front at ``host:port`` until it stops; return
        the process's id (the front then kills the actor, which frees its resources)."""
        sock = connect_back(host, port, token)
        run(lambda: serve(sock, spec))
        return os.getpid()
