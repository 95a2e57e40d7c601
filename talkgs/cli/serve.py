"""Serve fitted models to many clients: live sessions over WebSocket, render jobs over HTTP (docs/serve.md)."""

from __future__ import annotations

import argparse
import os

TOKEN_ENV = "TALKGS_SERVE_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=__doc__.strip().rstrip("."), description=__doc__,
                       epilog="Examples: talkgs serve my_subject;  talkgs serve models/ --port 9000;  "
                              "TALKGS_SERVE_TOKEN=... talkgs serve models/ --host 0.0.0.0 --ray")
    p.add_argument("models", nargs="+", metavar="MODEL_OR_DIR",
                   help="model files, fitted subject folders, or folders of either: the only models served")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8766, help="TCP port (0: a free one; default 8766)")
    p.add_argument("--token", help=f"bearer token clients must send (needed for any non-loopback --host); "
                                    f"better in ${TOKEN_ENV}, out of the process list")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="deploy on Ray Serve: a local cluster, or the cluster at ADDRESS (e.g. ray://head:10001)")
    p.add_argument("--config", metavar="YAML", help="a YAML file whose 'serve' section sets ServeConfig fields")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="rendering device (default: auto)")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from talkgs.serve.config import ServeConfig
    from talkgs.utils.config import load_section, merge

    cfg = load_section(ServeConfig, args.config, "serve")
    token = args.token or os.environ.get(TOKEN_ENV) or cfg.token
    changes = {"host": args.host, "port": args.port, "token": token}
    if args.device:
        changes["device"] = args.device
    return merge(cfg, changes)


def run(args: argparse.Namespace) -> int:
    from talkgs.utils import log

    cfg = config_from_args(args)
    if args.ray is None:
        from talkgs.serve.server import EmbeddedServer

        server = EmbeddedServer(args.models, cfg)
        names = ", ".join(server.service.catalog.entries)
        log.info(f"serving {names} at {server.url} (embedded; Ctrl-C stops)")
        server.serve_forever()
        return 0
    import time

    from talkgs.serve.server import serve_on_ray, stop_ray

    url = None
    try:
        url = serve_on_ray(args.models, cfg, args.ray or None)
        stops = "Ctrl-C stops" + ("" if args.ray else " and shuts the local cluster down")
        log.info(f"serving on Ray Serve at {url} ({stops})")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if url is not None:
            log.info("stopping")
        stop_ray(local=not args.ray)
    return 0
