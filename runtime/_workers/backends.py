"""Where the worker processes run: on this machine, or as Ray actors on a Ray cluster.

A backend starts worker ``index`` (:meth:`spawn`) and hands the front a connected socket to
it and a handle on its process (:class:`WorkerProcess`); everything else (the frames, the
routing, backpressure, aligned checkpoints, restarts and the replay of the log) is the
front's, the same on every backend.

- :class:`LocalBackend` (``backend="processes"``, the default): a process forked from the
  ``forkserver``, joined to the front by a unix socket pair.
- :class:`RayBackend` (``backend="ray"``): a Ray actor, placed by Ray on a node of its cluster
  with the resources asked, which connects back to the front over TCP (one listening socket
  per start, a random token to prove it is the actor the front started). Ray places,
  isolates and kills the workers; the data goes over the TCP stream, not through Ray's
  object store: a batch of events is one frame on a socket, with the socket's bounded
  buffer as backpressure, as on one machine. A worker that dies (its stream ends) is started
  again by the front's own supervision (a new actor), which restores its key groups from the
  checkpoint directory and replays the logged events: the directory must be one every node
  reaches (a shared path).
"""

from __future__ import annotations

import hmac
import importlib.util
import multiprocessing
import pickle
import secrets
import socket
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Protocol

import anyio
import anyio.to_thread

from actors import get_logger

from .._exceptions import ConfigError
from .protocol import HANDSHAKE_PID, HANDSHAKE_TOKEN
from .worker import WorkerSpec, main

__all__ = ["Backend", "LocalBackend", "RayBackend", "WorkerProcess", "backend_of"]

_log = get_logger("featurist.workers")

#: seconds a worker that connected has to send its token
_HANDSHAKE_TIMEOUT = 10.0


class WorkerProcess(Protocol):
    """The front's handle on a worker's process."""

    @property
    def pid(self) -> int | None:
        """The process's id (on its node), once known."""

    @property
    def exitcode(self) -> int | None:
        """The exit code, or None while it runs (or when unknown)."""

    def is_alive(self) -> bool:
        """Whether it runs."""

    def kill(self) -> None:
        """Kill it (nothing if it never started or has ended)."""

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for its end (and reap it); blocks the caller."""


class Backend(Protocol):
    """Starts worker processes for a front."""

    #: the backend's name, as in ``FeatureRuntime(backend=...)``
    name: str

    async def open(self, stack: AsyncExitStack) -> None:
        """Get ready to start workers (before the first :meth:`spawn`); ``stack`` closes
        what this opens when the runtime stops."""

    async def spawn(
        self, spec: WorkerSpec, track: Callable[[WorkerProcess], None]
    ) -> tuple[WorkerProcess, socket.socket]:
        """Start worker ``spec.index``: call ``track`` with its handle as soon as the process
        exists (the front kills what it tracks when it stops), and return the handle and a
        socket connected to the worker, on which the worker's first frame is its reply of
        id 0.

        Raises:
            ConfigError: the spec cannot be sent to the worker (not picklable).
            RuntimeError: the worker could not be started or placed.
        """


def backend_of(backend: Any, workers: int) -> Backend:
    """The backend ``FeatureRuntime(backend=...)`` names: ``"processes"``, ``"ray"`` or a
    :class:`RayBackend`.

    Raises:
        ConfigError: an unknown backend, or one other than processes with ``workers=0``.
    """
    if isinstance(backend, RayBackend):
        chosen: Backend = backend
    elif backend == "processes":
        chosen = LocalBackend()
    elif backend == "ray":
        chosen = RayBackend()
    else:
        raise ConfigError(f"backend must be 'processes', 'ray' or a RayBackend, got {backend!r}")
    if chosen.name != "processes" and not workers:
        raise ConfigError(f"backend={chosen.name!r} runs workers: give workers >= 1")
    return chosen


# -- on this machine ---------------------------------------------------------------------------
class _LocalProcess:
    """A ``multiprocessing`` process, as a :class:`WorkerProcess`."""

    __slots__ = ("_process",)

    def __init__(self, process: Any) -> None:
        self._process = process

    @property
    def pid(self) -> int | None:
        pid: int | None = self._process.pid
        return pid

    @property
    def exitcode(self) -> int | None:
        code: int | None = self._process.exitcode
        return code

    def is_alive(self) -> bool:
        return self._process.pid is not None and bool(self._process.is_alive())

    def kill(self) -> None:
        if self.is_alive():
            self._process.kill()

    def join(self, timeout: float | None = None) -> None:
        if self._process.pid is not None:
            self._process.join(timeout)


class LocalBackend:
    """Worker processes on this machine, forked from the ``forkserver``."""

    name = "processes"

    async def open(self, stack: AsyncExitStack) -> None:
        pass

    async def spawn(
        self, spec: WorkerSpec, track: Callable[[WorkerProcess], None]
    ) -> tuple[WorkerProcess, socket.socket]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = _context().Process(
            target=main,
            args=(theirs, spec),
            name=f"{_WORKER_NAME}{spec.index}",
            daemon=True,
        )
        handle = _LocalProcess(process)
        track(handle)  # killed at the latest when the front stops
        try:
            # in a thread: starting a process (fork, exec, the spec written to it) takes
            # a good part of a second on a busy machine, too long to hold the event loop
            await anyio.to_thread.run_sync(process.start)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            mine.close()
            raise ConfigError(
                f"workers: the runtime's options cannot be sent to a worker process ({exc})"
            ) from exc
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return handle, mine


#: the start of a local worker process's name (``multiprocessing``'s process name)
_WORKER_NAME = "featurist-worker-"


def refuse_in_worker() -> None:
    """Refuse to start local workers from a worker process.

    A worker imports the application's main module, as any ``multiprocessing`` child does
    (its name is set by then). A script that starts its runtime at import, not under
    ``if __name__ == "__main__":``, would start one in each worker too, which would fail on
    the checkpoint directory's lock or on multiprocessing's bootstrapping check, unclearly.

    Raises:
        ConfigError: this process is a worker, naming the guard.
    """
    if multiprocessing.current_process().name.startswith(_WORKER_NAME):
        raise ConfigError(
            "a FeatureRuntime with workers was started in a worker process, while it "
            "imported the application's main module: start the runtime under "
            "'if __name__ == \"__main__\":' (each worker imports that module again; "
            "docs/scaling.md)"
        )


def _context() -> Any:
    """``forkserver``: each worker is forked from a server process that imported the runtime
    once (started on first use, it lives as long as this process), so a worker starts in a
    tenth of the time and CPU of a fresh interpreter (``spawn``). Neither forks this process,
    whose event loop runs."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["runtime"])
    return context


# -- on Ray ------------------------------------------------------------------------------------
def _ray() -> Any:
    """The ``ray`` module (imported on first use: it takes a second to import)."""
    import ray

    return ray


class _RayProcess:
    """A worker actor on Ray, as a :class:`WorkerProcess`: it runs while its ``serve`` call
    (``ref``) has not returned."""

    __slots__ = ("actor", "pid", "ref")

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        #: the actor's ``serve`` call, which returns when the worker ends
        self.ref: Any = None
        self.pid: int | None = None

    @property
    def exitcode(self) -> int | None:
        if self.is_alive():
            return None
        try:
            _ray().get(self.ref, timeout=0)
        except Exception:
            return -1  # it died (killed, or its node was lost)
        return 0

    def is_alive(self) -> bool:
        if self.ref is None:
            return False
        try:
            ready, _ = _ray().wait([self.ref], timeout=0)
        except Exception:  # Ray shut down: nothing of it runs for this process
            return False
        return not ready

    def kill(self) -> None:
        try:
            _ray().kill(self.actor, no_restart=True)
        except Exception:  # already gone, or Ray shut down: nothing to kill
            pass

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker's end, then release its actor (and the resources it holds:
        an actor whose ``serve`` returned would hold them until the front exits)."""
        if self.ref is not None:
            try:
                _ray().wait([self.ref], timeout=timeout)
            except Exception:
                return  # Ray shut down: its actors with it
            if self.is_alive():
                return
        self.kill()


class RayBackend:
    """Worker processes as Ray actors (``FeatureRuntime(..., workers=W, backend=RayBackend())``).

    Args:
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...), as
            ``ray.init(address=...)`` takes it. With None and Ray not yet initialized in this
            process, featurist starts a local Ray (``ray.init()``), which lives as long as the
            process. When the application has called ``ray.init`` itself, that Ray is used.
        num_cpus: the CPUs each worker actor asks for (Ray's scheduling resource: a worker is
            one event loop, so 1 by default).
        resources: custom resources each worker asks for (``{"featurist": 1}`` to place
            workers on the nodes that declare them).
        actor_options: further options of each actor (``ray.remote``'s: ``memory``,
            ``scheduling_strategy``, ``runtime_env``, ...). ``max_restarts`` is refused: the
            front restarts a worker itself, after restoring its state.
        init_options: further arguments of ``ray.init`` when featurist initializes Ray.
        front_host: the address the workers connect back to: this node's address, as Ray
            knows it (``ray.util.get_node_ip_address()``), by default. It must be reachable
            from every node that may run a worker. The front listens on it, or on every
            interface when it is not one of this machine's (behind NAT, a port mapping).
        placement_timeout: seconds a worker may take to be placed and to connect back before
            the start fails (with the cluster's free resources in the error).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        resources: Mapping[str, float] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
        front_host: str | None = None,
        placement_timeout: float = 120.0,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                "backend='ray' needs Ray, which is not installed: pip install 'featurist[ray]'"
            )
        if not (isinstance(num_cpus, (int, float)) and num_cpus >= 0):
            raise ConfigError(f"RayBackend: num_cpus must be a number >= 0, got {num_cpus!r}")
        if not (isinstance(placement_timeout, (int, float)) and placement_timeout > 0):
            raise ConfigError(
                f"RayBackend: placement_timeout must be seconds > 0, got {placement_timeout!r}"
            )
        options = dict(actor_options or {})
        for taken, hint in (
            ("max_restarts", "the front restarts a worker itself, after restoring its key groups"),
            ("max_task_retries", "the front sends a restarted worker what it missed"),
            ("num_cpus", "give RayBackend(num_cpus=...)"),
            ("resources", "give RayBackend(resources=...)"),
            ("name", "each worker is an actor of its own: a name would be taken twice"),
            ("namespace", "the workers live in the driver's job"),
            ("lifetime", "the workers end with the runtime; a detached one would outlive it"),
        ):
            if taken in options:
                raise ConfigError(f"RayBackend: actor_options may not set {taken!r} ({hint})")
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.actor_options = options
        self.init_options = dict(init_options or {})
        self.front_host = front_host
        self.placement_timeout = float(placement_timeout)
        self._actor_class: Any = None
        self._host = front_host

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, num_cpus={self.num_cpus!r})"

    async def open(self, stack: AsyncExitStack) -> None:
        """Initialize Ray in this process (unless it is), and make the worker actor class."""
        ray = await anyio.to_thread.run_sync(_ray)
        if not ray.is_initialized():
            options = {"include_dashboard": False, **self.init_options}
            _log.info("ray_init", address=self.address)
            await anyio.to_thread.run_sync(lambda: ray.init(address=self.address, **options))
        if self._host is None:
            self._host = ray.util.get_node_ip_address()
        if self._actor_class is None:
            from .ray_actor import RayWorker

            self._actor_class = ray.remote(RayWorker)

    async def spawn(
        self, spec: WorkerSpec, track: Callable[[WorkerProcess], None]
    ) -> tuple[WorkerProcess, socket.socket]:
        host = self._host
        assert host is not None and self._actor_class is not None, "open() first"
        token = secrets.token_bytes(HANDSHAKE_TOKEN)
        with _listener(host) as listener:
            listener.setblocking(False)
            port = listener.getsockname()[1]
            options: dict[str, Any] = {
                "num_cpus": self.num_cpus,
                "max_restarts": 0,
                **self.actor_options,
            }
            if self.resources:
                options["resources"] = self.resources
            actor = self._actor_class.options(**options).remote()
            handle = _RayProcess(actor)
            track(handle)  # killed at the latest when the front stops
            try:
                handle.ref = actor.serve.remote(host, port, token, spec)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise ConfigError(
                    f"workers: the runtime's options cannot be sent to a Ray worker ({exc})"
                ) from exc
            sock, pid = await self._accept(listener, token, handle, spec.index)
        handle.pid = pid
        _log.info("ray_worker_placed", worker=spec.index, pid=pid)
        return handle, sock

    async def _accept(
        self, listener: socket.socket, token: bytes, handle: _RayProcess, index: int
    ) -> tuple[socket.socket, int]:
        """The connection of the worker that proves it has ``token``, and its pid."""
        ray = _ray()
        deadline = anyio.current_time() + self.placement_timeout
        while True:
            if anyio.current_time() > deadline:
                handle.kill()
                free = await anyio.to_thread.run_sync(ray.available_resources)
                raise RuntimeError(
                    f"worker {index} was not placed on Ray within {self.placement_timeout:g} s: "
                    f"each worker asks for num_cpus={self.num_cpus:g}"
                    + (f" and resources={self.resources}" if self.resources else "")
                    + f"; the cluster has free: {_brief(free)}"
                )
            with anyio.move_on_after(0.25):
                await anyio.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                sock = None
            if sock is not None:
                try:
                    proof = await anyio.to_thread.run_sync(_handshake, sock)
                except BaseException:
                    sock.close()  # cancelled while it was read
                    raise
                if proof is not None and hmac.compare_digest(proof[0], token):
                    return sock, proof[1]
                sock.close()  # not our worker: keep waiting for it
                continue
            ready, _ = await anyio.to_thread.run_sync(lambda: ray.wait([handle.ref], timeout=0))
            if ready:  # its serve call ended before it connected: why
                try:
                    ray.get(handle.ref)
                except Exception as exc:
                    raise RuntimeError(f"worker {index} failed to start on Ray: {exc}") from exc
                raise RuntimeError(f"worker {index} ended on Ray before it connected")


def _listener(host: str) -> socket.socket:
    """A listening socket for one worker to connect back to: on ``host`` (IPv4 or IPv6), or
    on every interface where ``host`` is not one of this machine's (an address the workers
    reach through NAT, a service or a port mapping)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, 0), family=family)
    except OSError:
        return socket.create_server(("", 0), family=family)


def _handshake(sock: socket.socket) -> tuple[bytes, int] | None:
    """Read a connecting worker's token and pid (in a thread; None if it sends too little)."""
    sock.settimeout(_HANDSHAKE_TIMEOUT)
    size = HANDSHAKE_TOKEN + HANDSHAKE_PID
    data = b""
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    sock.settimeout(None)
    return data[:HANDSHAKE_TOKEN], int.from_bytes(data[HANDSHAKE_TOKEN:], "big")


def _brief(resources: Mapping[str, float]) -> str:
    """The resources people ask for, without Ray's per-node entries."""
    shown = {
        name: value
        for name, value in sorted(resources.items())
        if not name.startswith("node:") and name not in ("object_store_memory", "memory")
    }
    return ", ".join(f"{name}={value:g}" for name, value in shown.items()) or "nothing"
