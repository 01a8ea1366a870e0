"""`tollgate` command line: serve, check-config, init, keys, router, report, demo, bench-model."""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.accounting.store import describe_sources
from gateway.config import (
    DEFAULT_CONFIG_PATH,
    LOCAL_CONFIG_NAME,
    ConfigError,
    find_config,
    load_config,
    masked_dump,
)

# how long a --workers worker may go without answering uvicorn's health ping (its import
# and start included) before uvicorn kills and replaces it
WORKER_HEALTHCHECK_S = 60


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http.server import H1Server

    source = find_config(args.config)
    print(source, file=sys.stderr, flush=True)
    path = str(source.path)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    os.environ["TOLLGATE_CONFIG"] = path  # the workers (--workers) read the same file
    print(f"tollgate serve: {describe_sources(path, cfg.store)}", file=sys.stderr, flush=True)
    # One event loop per worker and matrices of a few dozen numbers: OpenBLAS's thread pool
    # (one thread per core, spinning after each call) would only compete with the loop.
    # Set before numpy is first imported (the router loads in the app).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # The store writer thread must not hold the GIL for the default 5 ms while the event loop
    # waits: measured p99 at concurrency 1 went from 0.8 to 3.9 ms with SQLite on.
    sys.setswitchinterval(0.0005)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    common = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        # httptools parsing, leaner per request than uvicorn's (gateway/http/server.py), with the
        # routing file's server limits; uvicorn's own protocols stay one flag away
        http=functools.partial(H1Server, limits=cfg.server)
        if args.http == "tollgate"
        else args.http,
        access_log=False,
        proxy_headers=False,  # loopback service; the middleware costs time on every request
        log_level=args.log_level,
        timeout_graceful_shutdown=int(cfg.server.drain_timeout_s) or None,
        lifespan="on",
    )
    if args.workers > 1:
        made = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
                prefix="tollgate-prom-"
            )
        # uvicorn (0.30+) kills a worker that does not answer its health ping within
        # timeout_worker_healthcheck (5 s by default), and a spawned worker cannot answer
        # while it imports the gateway: on a busy host that takes longer, and every worker
        # was killed and restarted before it served once
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
            common["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
        try:
            uvicorn.run("gateway.app:app_factory", factory=True, workers=args.workers, **common)  # type: ignore[arg-type]
        finally:
            if made:  # the workers' metric files: ours to remove, nobody reads them after
                shutil.rmtree(made, ignore_errors=True)
        return 0
    from gateway.app import create_app

    try:
        app = create_app(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    uvicorn.run(app, **common)  # type: ignore[arg-type]
    return 0


def _check_config(args: argparse.Namespace) -> int:
    source = find_config(args.file)
    print(source, file=sys.stderr)
    args.file = str(source.path)
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        from gateway.app import Gateway

        gw = Gateway(cfg, args.file)  # also checks router profiles and builds every upstream
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except Exception as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(masked_dump(cfg), indent=2))
    print(f"{args.file}: OK ({len(cfg.models)} models, {len(cfg.routes)} routes)", file=sys.stderr)
    print(f"tollgate check-config: {describe_sources(args.file, cfg.store)}", file=sys.stderr)
    rt = gw.runtime
    if rt.router is not None:
        print(f"router profiles (artifact {cfg.router.artifact!r}):", file=sys.stderr)
        for m in cfg.models:
            p = rt.profiles.get(m.name)
            role = "candidate" if m.name in rt.candidates else "not routed"
            if p is None:
                print(f"  {m.name}: no profile ({role})", file=sys.stderr)
            else:
                print(
                    f"  {m.name}: {p.profile} [{p.source}] ({role}; from {p.resolved_from!r}: "
                    f"{p.detail})",
                    file=sys.stderr,
                )
    return 0


INIT_HEADER = "# Written by `tollgate init` from the packaged default routing file.\n"


def _init(args: argparse.Namespace) -> int:
    dest = Path(args.path)
    if dest.is_dir():
        dest = dest / LOCAL_CONFIG_NAME
    if dest.exists() and not args.force:
        print(
            f"tollgate init: {dest.absolute()} exists; not overwritten (--force replaces it)",
            file=sys.stderr,
        )
        return 1
    text = INIT_HEADER + DEFAULT_CONFIG_PATH.read_text()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    except OSError as e:
        print(f"tollgate init: cannot write {dest.absolute()}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {dest.absolute()}; check it with: tollgate check-config {dest}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    if args.action is not None:
        return _managed_keys(args)
    if not args.id:
        print(
            "tollgate keys: give --id NAME (a key for the routing file), or use "
            "`tollgate keys create --name NAME` (stored, no file edit), `keys list`, "
            "`keys revoke ID`",
            file=sys.stderr,
        )
        return 2
    key = args.key or "tg-" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(key.encode()).hexdigest()
    if not args.key:
        print(f"key (give this to the client, it is not stored): {key}")
    print("add to the routing file under auth.keys:")
    print(f"  - id: {args.id}\n    sha256: {digest}")
    return 0


def _managed_keys(args: argparse.Namespace) -> int:
    """`keys create|list|revoke`: keys in the key store of the routing file's store."""
    from gateway.tenants.keys import KeyStoreError, create_key, make_key_store

    src = find_config(args.config)
    try:
        cfg = load_config(src.path)
    except ConfigError as e:
        print(f"tollgate keys: {e}", file=sys.stderr)
        return 1
    store = make_key_store(cfg.store)
    if store is None:
        print(
            "tollgate keys: store.sqlite_path is :memory:, so there is no key store; list "
            "keys in the routing file instead (tollgate keys --id NAME)",
            file=sys.stderr,
        )
        return 1
    try:
        if args.action == "create":
            if not args.name:
                print("tollgate keys create: give --name NAME (the key id)", file=sys.stderr)
                return 2
            if args.name in {k.id for k in cfg.auth.keys}:
                print(
                    f"tollgate keys create: {args.name!r} is a key of {src.path}; choose "
                    "another --name",
                    file=sys.stderr,
                )
                return 1
            limits: dict[str, object] = {
                f: getattr(args, f)
                for f in ("rpm", "tpm", "budget_usd", "budget_window")
                if getattr(args, f) is not None
            }
            if args.models is not None:
                limits["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
            key, stored = create_key(store, args.name, limits)
            print(f"key (give this to the team; it is shown once and not stored): {key}")
            shown = {k: v for k, v in stored.public().items() if v is not None}
            print(f"stored in the key store ({store.name}): {shown}")
            print(
                "gateways using this store accept it within auth.refresh_interval_s "
                f"({cfg.auth.refresh_interval_s:g} s)"
            )
            return 0
        if args.action == "list":
            rows = store.all()
            if not rows and not cfg.auth.keys:
                print("no keys (tollgate keys create --name NAME makes one)")
            for s in rows:
                state = "revoked" if s.revoked_at is not None else "active"
                limits_s = ", ".join(
                    f"{k}={v}"
                    for k, v in s.public().items()
                    if k not in ("id", "created_at", "revoked_at") and v is not None
                )
                print(f"{s.key.id}\t{state}\t{limits_s}")
            for k in cfg.auth.keys:
                print(f"{k.id}\tactive (routing file)")
            return 0
        if not args.target:
            print("tollgate keys revoke: give the key id (tollgate keys list)", file=sys.stderr)
            return 2
        if not store.revoke(args.target):
            print(
                f"tollgate keys revoke: no active key {args.target!r} in the key store",
                file=sys.stderr,
            )
            return 1
        print(
            f"revoked {args.target}; refused by every gateway within auth.refresh_interval_s "
            f"({cfg.auth.refresh_interval_s:g} s)"
        )
        return 0
    except (KeyStoreError, ValueError) as e:
        print(f"tollgate keys {args.action}: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _workers(text: str) -> int:
    """--workers, or its default $TOLLGATE_WORKERS (the container image sets it)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of processes: give a whole number from 1 "
            "(--workers, or $TOLLGATE_WORKERS)"
        )
    return n


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["router"] and "--from-store" in argv:
        from gateway.accounting.learn import main as learn_main

        return learn_main([a for a in argv[1:] if a != "train"])
    if argv and argv[0] == "router":
        from router_models.cli import main as router_main

        return router_main(argv[1:])
    if argv and argv[0] == "report":
        from gateway.views.report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "demo":
        from gateway.demo.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "bench-model":
        from gateway.measure.cli import main as bench_main

        return bench_main(argv[1:])
    p = argparse.ArgumentParser(prog="tollgate", description="Cost-aware LLM routing gateway")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway: an OpenAI-compatible API at http://HOST:PORT/v1, "
        "with /metrics, /v1/usage and /dashboard. It says at start which routing file and "
        "which store it uses.",
    )
    s.add_argument(
        "--config",
        help="routing YAML (default: $TOLLGATE_CONFIG, else ./tollgate.yaml, else the packaged "
        "default; `tollgate init` writes a copy to edit)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all "
        "interfaces: then set auth.keys in the routing file)",
    )
    s.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    s.add_argument(
        "--workers",
        type=_workers,
        default=os.environ.get("TOLLGATE_WORKERS", "1"),
        help="processes sharing the port (default $TOLLGATE_WORKERS, else 1); each runs its "
        "own event loop, /metrics sums over all of them",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    s.add_argument(
        "--http",
        default="tollgate",
        choices=["tollgate", "httptools", "h11"],
        help="HTTP/1.1 protocol: tollgate's own (default, gateway/http/server.py) or uvicorn's",
    )
    c = sub.add_parser("check-config", help="validate a routing YAML and print it resolved")
    c.add_argument(
        "file",
        nargs="?",
        help="routing YAML (default: $TOLLGATE_CONFIG, else ./tollgate.yaml, else the "
        "packaged default)",
    )
    i = sub.add_parser(
        "init",
        help="write a commented starter routing file to edit (default ./tollgate.yaml)",
        description="Write the packaged default routing file, with its comments, to PATH: "
        "four tiers on loopback, the router's policies, the store. Edit the endpoints to "
        "point at your servers, then run `tollgate check-config`.",
    )
    i.add_argument(
        "path",
        nargs="?",
        default=LOCAL_CONFIG_NAME,
        help=f"where to write it (default ./{LOCAL_CONFIG_NAME}; in a folder: its "
        f"{LOCAL_CONFIG_NAME})",
    )
    i.add_argument("--force", action="store_true", help="replace an existing file")
    k = sub.add_parser(
        "keys",
        help="gateway keys: create/list/revoke in the key store, or --id for the routing file",
        description="`keys create --name team-a [--rpm N --tpm N --budget-usd X "
        "--budget-window month --models auto,chat]` stores a new key (printed once) in the "
        "key store of the routing file's store; `keys list`; `keys revoke ID`. "
        "`keys --id NAME` prints a key and the entry to put under auth.keys instead.",
    )
    k.add_argument("action", nargs="?", choices=["create", "list", "revoke"])
    k.add_argument("target", nargs="?", help="revoke: the key id")
    k.add_argument("--id", help="a name for a routing-file key, used in reports")
    k.add_argument("--key", help="hash this key instead of generating one (with --id)")
    k.add_argument("--name", help="create: the key id (letters, digits, . _ : -)")
    k.add_argument("--rpm", type=int, help="create: requests per minute")
    k.add_argument("--tpm", type=int, help="create: tokens per minute")
    k.add_argument("--budget-usd", type=float, help="create: spend allowed per window")
    k.add_argument("--budget-window", choices=["day", "week", "month"], help="default month")
    k.add_argument("--models", help="create: the model names it may call, comma-separated")
    k.add_argument("--config", help="routing YAML whose store holds the keys (as serve)")
    sub.add_parser(
        "router",
        help="train, refit (--from-store), evaluate or extend the learned router "
        "(see tollgate router -h)",
    )
    sub.add_parser("report", help="requests, cost, savings, latency, quality (tollgate report -h)")
    sub.add_parser(
        "demo", help="replay real answers of real models through the router (tollgate demo -h)"
    )
    sub.add_parser(
        "bench-model",
        help="measure a model server's throughput, latency, cost and exact-match accuracy by "
        "concurrency; --write its tokens_per_second (tollgate bench-model -h)",
    )
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "check-config":
        return _check_config(args)
    if args.cmd == "init":
        return _init(args)
    if args.cmd == "keys":
        return _keys(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
