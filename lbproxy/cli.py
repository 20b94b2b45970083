"""The ``lbproxy`` command: ``serve CONFIG``, ``check CONFIG``, ``render CONFIG``, ``simulate CONFIG``,
``queue migrate CONFIG``, ``--version``.

Exit codes: 0 ok, 1 runtime failure, 2 invalid config (one line per problem, naming the key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from . import __version__
from .checks import backend_problems, notices, risk_warnings
from .config import Config, ConfigError, load_config
from .simulate.command import add_arguments as simulate_arguments

EXIT_INVALID = 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"lbproxy: {path} is not a valid config:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_check(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    problems = backend_problems(config)
    for problem in problems:
        print(f"error: {problem}")
    for warning in risk_warnings(config):
        print(f"warning: {warning}")
    for notice in notices(config):
        print(f"note: {notice}")
    if problems:
        print(f"{path}: cannot be served as it is ({len(problems)} problem(s))")
        return EXIT_INVALID
    print(f"{path}: ok (endpoint {config.name}, backend {config.backend.type})")
    return 0


def cmd_render(path: str) -> int:
    """Print the worker manifests ``serve`` would apply with the kubernetes backend (for GitOps and review)."""
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    if config.worker.image is None:
        print("lbproxy: worker.image: required to render kubernetes manifests", file=sys.stderr)
        return EXIT_INVALID
    import yaml

    from .kube.manifests import render

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True  # reviewers read plain YAML, not anchors

    print(yaml.dump_all(render(config), Dumper=_NoAliases, sort_keys=False), end="")
    return 0


def cmd_queue_migrate(path: str) -> int:
    """Create or migrate the PostgreSQL job store's schema (for migrations run apart from ``serve``)."""
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    problems = [p for p in backend_problems(config) if p.startswith("queue.store")]
    if problems:
        print(f"lbproxy: {problems[0]}", file=sys.stderr)
        return EXIT_INVALID
    from .queue.migrate_cmd import migrate

    return migrate(config)


def cmd_serve(path: str, log_level: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    problems = backend_problems(config)
    if problems:
        print(f"lbproxy: {path} cannot be served:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    from . import logs

    logs.setup(log_level, config.name, config.log.format)
    from .server import serve  # aiohttp and the rest load only when serving
    from .sockets import raise_open_files_limit

    logging.getLogger("lbproxy").debug("open-files limit: %d", raise_open_files_limit())
    return _run(serve(config, path=path))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (the ``fast`` extra): a faster event loop, same asyncio API."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbproxy", description="A load-balancing endpoint for GPU HTTP workers.")
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the endpoint described by CONFIG")
    p_serve.add_argument("config", metavar="CONFIG")
    p_serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p_check = sub.add_parser("check", help="validate CONFIG and warn about risky settings")
    p_check.add_argument("config", metavar="CONFIG")
    p_render = sub.add_parser("render", help="print the kubernetes worker manifests for CONFIG")
    p_render.add_argument("config", metavar="CONFIG")
    simulate_arguments(sub.add_parser("simulate", help="replay a trace through CONFIG's scaling on a virtual clock"))
    p_queue = sub.add_parser("queue", help="queue endpoints' job store")
    queue_sub = p_queue.add_subparsers(dest="queue_command", required=True)
    p_migrate = queue_sub.add_parser("migrate", help="create or migrate the PostgreSQL job store's schema")
    p_migrate.add_argument("config", metavar="CONFIG")
    args = parser.parse_args(argv)
    if args.command == "queue":
        return cmd_queue_migrate(args.config)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "render":
        return cmd_render(args.config)
    if args.command == "simulate":
        from .simulate.command import run

        return run(args)
    return cmd_serve(args.config, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
