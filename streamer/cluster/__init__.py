"""The engine past one machine, on Ray: worker actors hold the streams, a directory places them, the server
is their gateway.

- `streamer.cluster.worker.EngineWorker`: one per GPU (on CPU, per `streamer_worker` resource slot): a
  model, one engine, and the sources and ingest of the streams placed on it, so frames never leave it.
- `streamer.cluster.directory.StreamDirectory`: a named, detached actor that maps each stream to its
  worker, persists that map next to the snapshots, places new streams on the least-loaded worker,
  gives a restarted worker its streams back and moves the streams of one that does not come back.
- `streamer.cluster.gateway.RayHub`: the server's hub (`streamer.server.hub.Hub`) over them, so the
  websocket protocol and the HTTP API are the same as in one process.

Ray is an optional dependency (`bash scripts/setup.sh --ray`); nothing here imports it at module level.
"""

from __future__ import annotations

import os
from types import ModuleType

from streamer.errors import UserError

NAMESPACE = "streamer"
DIRECTORY_NAME = "streamer-directory"
WORKER_RESOURCE = "streamer_worker"
INSTALL_HINT = "bash scripts/setup.sh --ray"
# The source "URL" of a stream whose frames the gateway relays to its worker (a browser's webcam).
RELAYED = "relayed:"


def worker_name(index: int) -> str:
    return f"streamer-worker-{index}"


def require_ray() -> ModuleType:
    """The `ray` module, or a UserError naming the install command."""
    # The server stops on SIGTERM by saving every stream; Ray's crash handler would print a stack dump for it.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise UserError(
            f"Serving on Ray needs the ray package, which is not installed; run `{INSTALL_HINT}`."
        ) from None
    return ray


def unwrap(error: BaseException) -> BaseException:
    """The exception a remote method raised, out of the wrappers Ray puts around it (one per actor hop)."""
    import ray.exceptions

    while isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        error = error.cause
    return error
