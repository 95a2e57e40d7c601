"""Run the app: embedded in this process (``EmbeddedServer``: uvicorn, one replica) or on Ray Serve (``serve_on_ray``).

The two run the same FastAPI app (``talkgs.serve.app``); they differ in how a model is got. Embedded, a
``ModelCache`` keeps the most recently used models. On Ray each replica is a Ray actor that loads models through
``serve.multiplexed`` (least recently used evicted per replica), asks Ray for ``RayConfig``'s CPUs and GPUs, and
autoscales on ongoing requests (a live session counts as one for as long as it is open). A client that sends the
header ``serve_multiplexed_model_id: NAME`` is routed to a replica that has NAME loaded, when there is one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from pathlib import Path

from talkgs.errors import TalkgsError
from talkgs.serve.app import Service, build_app, set_service
from talkgs.serve.config import ServeConfig
from talkgs.serve.models import ModelCache, ModelCatalog

#: The Ray Serve application's name (``serve status`` shows it).
APP_NAME = "talkgs"
#: Seconds ``stop_ray`` waits for Ray Serve to remove the app before it stops the cluster anyway.
STOP_TIMEOUT_S = 15.0
#: Largest WebSocket message uvicorn accepts (bytes): a chunk of ``ServeConfig.max_chunk_s`` at 16 kHz PCM16 is
#: 32 kB a second; the session refuses longer chunks itself, with a reason, below this.
WS_MAX_BYTES = 16 * 1024 * 1024


def _needs(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise TalkgsError(f"talkgs serve needs {module}: pip install 'talkgs[serve]' (with the torch you have: "
                          "pip install 'talkgs[serve]' torch==2.13.0)")


def embedded_service(sources: list[str | Path], cfg: ServeConfig) -> Service:
    """The service of one process: the catalog of ``sources`` and a ``ModelCache``."""
    catalog = ModelCatalog(sources)
    cache = ModelCache(catalog, cfg.models_cached, cfg.device)

    async def get_model(name: str):
        return await asyncio.to_thread(cache.get, name)

    return Service(catalog, cfg, get_model, cache.loaded)


class EmbeddedServer:
    """The app on uvicorn in this process: ``start`` binds (a port in use fails at once) and serves on a thread;
    ``serve_forever`` serves on this thread until Ctrl-C; ``stop`` ends it."""

    def __init__(self, sources: list[str | Path], cfg: ServeConfig):
        _needs("fastapi")
        _needs("uvicorn")
        cfg.check_exposure()
        self.cfg = cfg
        self.service = embedded_service(sources, cfg)
        set_service(self.service)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((cfg.host, cfg.port))
        except OSError as e:
            self._sock.close()
            raise TalkgsError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror} (another server there? "
                              "--port 0 picks a free one)") from None
        self.port = self._sock.getsockname()[1]
        self._thread: threading.Thread | None = None
        import uvicorn

        config = uvicorn.Config(build_app(), log_level="warning", ws_max_size=WS_MAX_BYTES, lifespan="off")
        self._server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> EmbeddedServer:
        self._server.config.install_signal_handlers = False  # not on the main thread
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="talkgs-serve")
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()


def replica_deployment(sources: list[str | Path], cfg: ServeConfig):
    """The Ray Serve application: the app as a deployment whose replicas multiplex the models of ``sources``."""
    from ray import serve

    from talkgs.utils.config import to_dict

    rc = cfg.ray
    paths = [str(Path(s).resolve()) for s in sources]  # replicas on other nodes need the same paths (shared storage)

    @serve.deployment(
        name="talkgs",
        ray_actor_options={"num_cpus": rc.replica_cpus, "num_gpus": rc.replica_gpus},
        max_ongoing_requests=cfg.max_sessions,
        autoscaling_config={"min_replicas": rc.min_replicas, "max_replicas": rc.max_replicas,
                            "target_ongoing_requests": rc.target_sessions},
    )
    @serve.ingress(build_app())
    class TalkgsReplica:
        def __init__(self, sources: list[str], cfg_data: dict):
            from talkgs.utils.config import from_dict

            replica_cfg = from_dict(ServeConfig, cfg_data)
            self.catalog = ModelCatalog(sources)
            self.device = replica_cfg.device
            self._held: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
            replica = serve.get_replica_context().replica_id.unique_id
            set_service(Service(self.catalog, replica_cfg, self.get_model, lambda: sorted(self._held),
                                replica=f"ray replica {replica}"))

        @serve.multiplexed(max_num_models_per_replica=rc.models_per_replica)
        async def get_model(self, name: str):
            from talkgs.model.fitted import FittedModel
            from talkgs.serve.session import warm_up

            model = await asyncio.to_thread(FittedModel.load, self.catalog[name].path)
            await asyncio.to_thread(warm_up, model, self.device)
            self._held[name] = model  # dropped when the multiplexer evicts it and no session holds it
            return model

    return TalkgsReplica.bind(paths, to_dict(cfg))


def start_ray(address: str | None) -> None:
    """Connect to the Ray cluster at ``address``, or start a local one (no dashboard, on 127.0.0.1) when None."""
    _needs("ray")
    import ray

    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # its GCS and raylet on loopback: a cluster of this machine alone is not offered to the network
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    except (ConnectionError, ValueError) as e:
        raise TalkgsError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def serve_on_ray(sources: list[str | Path], cfg: ServeConfig, address: str | None = None) -> str:
    """Deploy the app on Ray Serve (HTTP on ``cfg.host``:``cfg.port``); returns its URL. ``stop_ray`` ends it."""
    _needs("fastapi")
    cfg.check_exposure()
    ModelCatalog(sources)  # bad paths fail here, in one line, not in a replica's log
    if cfg.port == 0:
        with socket.socket() as s:  # Ray's proxy needs a port number: take a free one
            s.bind((cfg.host, 0))
            cfg.port = s.getsockname()[1]
    start_ray(address)
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(replica_deployment(sources, cfg), name=APP_NAME, route_prefix="/")
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"http://{host}:{cfg.port}"


def stop_ray(local: bool = True) -> None:
    """Take the app off Ray Serve: on a local cluster this process started, stop Serve and the cluster; on a
    cluster given by address, delete this app alone (other apps there go on) and disconnect.

    Ctrl-C in a terminal reaches the whole process group, the local cluster's raylet and GCS too, and Serve's
    shutdown would then wait for a controller that is gone: it gets ``STOP_TIMEOUT_S``.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    stop = serve.shutdown if local else (lambda: serve.delete(APP_NAME))
    stopper = threading.Thread(target=stop, daemon=True, name="talkgs-serve-shutdown")
    stopper.start()
    stopper.join(STOP_TIMEOUT_S)
    ray.shutdown()  # a local cluster stops with its driver; a remote one is only disconnected from
