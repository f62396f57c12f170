"""`openvertex serve | models | keys | usage | cassettes`: argument parsing and start-up only."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from openvertex.cassettes import Cassettes, DamagedCassette, first_user_text, prune
from openvertex.service.keys import KeySpec, issue_key
from openvertex.settings import (
    BackendSettings,
    GeminiBackendSettings,
    LocalBackendSettings,
    ModelRoute,
    RecordBackendSettings,
    ReplayBackendSettings,
    Settings,
    load_settings,
)
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.database import Database, database_for
from openvertex.store.usage import UsageStore

BASE_PATH = "/v1/projects/local/locations/us-central1/endpoints/openapi"
DEFAULT_CASSETTES = "cassettes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openvertex", description="Vertex AI's Chat Completions API, self-hosted.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--model", help="GGUF path or alias for the local backend (default smollm2)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument(
        "--insecure-no-auth", action="store_true", default=None, help="allow a non-loopback bind with no API keys"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    models = commands.add_parser("models", help="list the models this configuration serves")
    models.add_argument("--config", type=Path, help="TOML configuration file")
    keys = commands.add_parser("keys", help="issue, list and revoke API keys (kept in state_dir's database)")
    keys.add_argument("--config", type=Path, help="TOML configuration file")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key; it is shown once")
    create.add_argument("name")
    create.add_argument("--models", nargs="+", default=[], metavar="GLOB", help="models it may use (default: all)")
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--tpm", type=_positive, help="tokens per minute (prompt and output)")
    create.add_argument("--concurrent", type=_positive, help="requests in flight at once")
    create.add_argument("--expires-in-days", type=float, help="valid for this many days (default: until revoked)")
    actions.add_parser("list", help="the keys, without their secrets")
    revoke = actions.add_parser("revoke", help="refuse a key from now on (running servers within keys_refresh_s)")
    revoke.add_argument("name")
    usage = commands.add_parser("usage", help="requests and tokens per key and model")
    usage.add_argument("--config", type=Path, help="TOML configuration file")
    usage.add_argument("--hours", type=float, default=24.0, help="over the last this many hours (default 24)")
    _cassette_commands(commands)
    return parser


def _cassette_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cassettes = commands.add_parser("cassettes", help="the exchanges a record backend wrote (see README: CI)")
    actions = cassettes.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="one line per recorded exchange")
    listed.add_argument("dir", nargs="?", type=Path, default=Path(DEFAULT_CASSETTES))
    show = actions.add_parser("show", help="an exchange's file, as pretty JSON")
    show.add_argument("digest", help="the digest, or its first characters")
    show.add_argument("--dir", type=Path, default=Path(DEFAULT_CASSETTES))
    prune = actions.add_parser("prune", help="remove old exchanges and media no exchange uses")
    prune.add_argument("dir", nargs="?", type=Path, default=Path(DEFAULT_CASSETTES))
    prune.add_argument("--older-than", type=_days, metavar="DAYS", help="exchanges recorded more than DAYS ago")
    prune.add_argument("--unused-media", action="store_true", help="media no exchange refers to")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _days(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # a negative age would reach into the future: every file (NaN: none)
        raise argparse.ArgumentTypeError("must be a number of days, 0 or more")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_model(settings: Settings, model: str) -> Settings:
    """--model replaces the local backend's model and makes its id routable."""
    from openvertex.backends.local.model import model_id

    local = settings.backends.get("local")
    if not isinstance(local, LocalBackendSettings):
        raise SystemExit("--model needs a backend named 'local' of type 'local' in the configuration")
    settings.backends["local"] = local.model_copy(update={"model": model})
    if all(route.model != model_id(model) for route in settings.routes):
        settings.routes.append(ModelRoute(model=model_id(model), backend="local"))
    return settings


def _serve_settings(args: argparse.Namespace) -> Settings:
    flags = {
        "host": args.host,
        "port": args.port,
        "insecure_no_auth": args.insecure_no_auth,
        "log_level": args.log_level,
    }
    overrides = _vertex_container() | {k: v for k, v in flags.items() if v is not None}  # flags win
    settings = load_settings(args.config, **overrides)
    return _with_model(settings, args.model) if args.model else settings


def _vertex_container() -> dict[str, object]:
    """What Vertex AI tells a custom prediction container in its environment (AIP_*)."""
    env = os.environ
    if not env.get("AIP_MODE"):
        return {}
    port = env.get("AIP_HTTP_PORT", "8080")
    if not port.isdigit():
        raise SystemExit(f"AIP_HTTP_PORT must be a port number, not {port!r}")
    return {
        "host": "0.0.0.0",  # a container listens on every interface
        "port": int(port),
        "health_route": env.get("AIP_HEALTH_ROUTE"),
        "predict_route": env.get("AIP_PREDICT_ROUTE"),
    }


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from openvertex.app import create_app
    from openvertex.http.lifecycle import DrainingServer
    from openvertex.http.listener import bind_listener
    from openvertex.logs import configure_logging

    # SIGHUP reloads once the app has started; before that it must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = _serve_settings(args)
    if (
        not settings.api_keys
        and not _is_loopback(settings.host)
        and not settings.insecure_no_auth
        and not os.environ.get("AIP_MODE")  # on Vertex AI, the endpoint's IAM admits callers
        and not _issued(settings)
    ):
        raise SystemExit(
            f"refusing to serve on {settings.host} without API keys: set OPENVERTEX_API_KEYS "
            "(or api_keys in the config file), issue one with `openvertex keys create`, or pass --insecure-no-auth"
        )
    configure_logging(settings.log_level, settings.log_format)

    def reload() -> Settings:  # SIGHUP: the keys and routes as the configuration now says
        fresh = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            insecure_no_auth=args.insecure_no_auth,
            log_level=args.log_level,
        )
        return _with_model(fresh, args.model) if args.model else fresh

    try:
        app = create_app(settings, reload=reload)
    except (FileNotFoundError, ValueError) as error:  # a missing model, a malformed secret
        raise SystemExit(str(error)) from None
    sock = bind_listener(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    print(f"openvertex listening on http://{shown}:{port}", flush=True)
    print(f"OpenAI SDK base_url: http://{shown}:{port}{BASE_PATH}", flush=True)
    # What start-up built (models, schemas, tokenizer tables) lives as long as the process: frozen,
    # the collector stops walking it at every full collection.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's own lines go through the handler configured above
        access_log=False,  # each request has its own line (http/recording.py)
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    draining = DrainingServer(
        config, app.state.lifecycle, grace_s=settings.drain_grace_s, timeout_s=settings.drain_timeout_s
    )
    draining.run(sockets=[sock])


def models(args: argparse.Namespace) -> None:
    from openvertex.backends.local.model import ALIASES

    settings = load_settings(args.config)
    print("model (glob)\tbackend\tserved by")
    for route in settings.routes:
        print(f"{route.model}\t{route.backend}\t{_served_by(settings.backends[route.backend])}")
    if settings.endpoints:
        print("\nendpoint\tserved by")
        for endpoint_id, endpoint in settings.endpoints.items():
            print(f"{endpoint_id}\t{', '.join(endpoint.upstreams) or f'backend {endpoint.backend}'}")
    print("\nembedded aliases:")
    for alias, packaged in ALIASES.items():
        where = packaged.path()
        print(f"{alias}\t{packaged.description}\t{where or 'not installed'}")


def _served_by(backend: BackendSettings) -> str:
    if isinstance(backend, RecordBackendSettings):
        return f"backend {backend.backend}, recorded to {backend.cassettes}"
    if isinstance(backend, ReplayBackendSettings):
        return f"recordings in {backend.cassettes}" + (f", else backend {backend.fallback}" if backend.fallback else "")
    if isinstance(backend, LocalBackendSettings):
        return f"local model {backend.model}"
    if isinstance(backend, GeminiBackendSettings):
        where = f"Vertex AI ({backend.location})" if backend.api == "vertex" else "the Gemini Developer API"
        return f"Gemini on {where}" + (f" via {backend.base_url}" if backend.base_url else "")
    return "a scripted fake"


def _issued(settings: Settings) -> bool:
    """Whether keys issued with `openvertex keys create` are in use."""
    database = database_for(settings)
    database.open()
    try:
        return any(row.status(time.time()) == "active" for row in ApiKeyStore(database).all())
    finally:
        database.close()


def _database(args: argparse.Namespace) -> Database:
    database = database_for(load_settings(args.config))
    database.open()
    return database


def keys(args: argparse.Namespace) -> None:
    database = _database(args)
    try:
        store = ApiKeyStore(database)
        if args.action == "create":
            expire = time.time() + args.expires_in_days * 86400 if args.expires_in_days else None
            try:
                spec = KeySpec(
                    name=args.name,
                    models=args.models,
                    requests_per_minute=args.rpm,
                    tokens_per_minute=args.tpm,
                    concurrent_requests=args.concurrent,
                    expire_time=expire,
                )
                key = issue_key(store, spec)
            except ValidationError as error:
                raise SystemExit(f"invalid key: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}") from None
            except ValueError as error:
                raise SystemExit(str(error)) from None
            print(key)
            print(f"key {args.name!r} created; it is shown only this once", file=sys.stderr)
        elif args.action == "list":
            print("name\tmodels\trpm\ttpm\tconcurrent\tcreated\texpires\tstatus")
            for row in store.all():
                status = row.status(time.time())
                limits = (row.requests_per_minute, row.tokens_per_minute, row.concurrent_requests)
                print(
                    f"{row.name}\t{','.join(row.models) or '*'}\t"
                    + "\t".join(str(v or "-") for v in limits)
                    + f"\t{_when(row.create_time)}\t{_when(row.expire_time)}\t{status}"
                )
        elif not store.revoke(args.name, now=time.time()):
            raise SystemExit(f"no key {args.name!r} in use")
        else:
            print(f"key {args.name!r} revoked")
    finally:
        database.close()


def usage(args: argparse.Namespace) -> None:
    database = _database(args)
    try:
        rows = UsageStore(database).totals(since_minute=int((time.time() - args.hours * 3600) // 60))
    finally:
        database.close()
    print("key\tmodel\trequests\tprompt_tokens\toutput_tokens")
    for row in rows:
        print(f"{row.key_name}\t{row.model or '-'}\t{row.requests}\t{row.prompt_tokens}\t{row.output_tokens}")


def cassettes(args: argparse.Namespace) -> None:
    shelf = Cassettes(args.dir)
    if not shelf.directory.is_dir():
        raise SystemExit(f"{shelf.directory} is not a directory")
    {"list": _list_cassettes, "show": _show_cassette, "prune": _prune_cassettes}[args.action](shelf, args)


def _list_cassettes(shelf: Cassettes, args: argparse.Namespace) -> None:
    print("digest\tmodel\tkind\tchunks\trecorded\tfirst user text")
    for exchange in shelf.exchanges():
        if isinstance(exchange, DamagedCassette):
            print(f"{exchange.path.name}\t-\tdamaged\t-\t-\t{exchange.reason}")
            continue
        kind = "error" if exchange.error is not None else exchange.kind
        chunks = len(exchange.chunks) if exchange.chunks is not None else "-"
        text = " ".join((first_user_text(exchange.request) or "").split())
        snippet = text if len(text) <= 60 else text[:57] + "..."
        print(f"{exchange.digest}\t{exchange.model}\t{kind}\t{chunks}\t{_when(exchange.recorded_at)}\t{snippet}")


def _show_cassette(shelf: Cassettes, args: argparse.Namespace) -> None:
    found = shelf.matching(args.digest)
    digests = {path.name.split(".")[0] for path in found}
    if len(digests) != 1:
        many = "more than one recorded exchange has" if digests else "no recorded exchange has"
        raise SystemExit(f"{many} a digest starting {args.digest!r} in {shelf.directory}")
    for path in found:  # its whole answer and its stream, where both were recorded
        try:
            exchange = json.loads(path.read_bytes())
        except ValueError as error:
            raise SystemExit(f"{path.name}: damaged: not JSON ({error})") from None
        print(json.dumps(exchange, indent=2, ensure_ascii=False))


def _prune_cassettes(shelf: Cassettes, args: argparse.Namespace) -> None:
    if args.older_than is None and not args.unused_media:
        raise SystemExit("say what to prune: --older-than DAYS, --unused-media, or both")
    older = args.older_than * 86400 if args.older_than is not None else None
    removed = prune(shelf, older_than_s=older, unused_media=args.unused_media, at=time.time())
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} file(s) removed")


def _when(moment: float | None) -> str:
    return "-" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    commands = {"serve": serve, "models": models, "keys": keys, "usage": usage, "cassettes": cassettes}
    commands[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
