"""The ``sluice`` command.

    sluice serve [--config FILE] [--bind HOST:PORT] [--workers N|auto] [--log-level LEVEL]
    sluice fake-upstream [--port 9000] [--scenario tokens=20,tps=50,...]
    sluice probe URL [--compare URL2] [--runs N] [--plot FILE.png] [--json]
    sluice keys {new,create,list,show,update,revoke,usage} ...   (server.keys.cli)

``serve`` runs `server.app:app` through hypercorn's trio worker, with the
settings of `server.serving.launch.hypercorn_config`. The configuration is checked
here first, so a bad file stops the command with one line naming the key
(exit 2); an address in use is one line too (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys

from server.backends.http import api_key_from_env
from server.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway through hypercorn (trio)")
    serve.add_argument("--config", help="TOML settings file (default: $SLUICE_CONFIG)")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                       help="worker processes; auto: one per core this process may use")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                       help="debug adds a line per completed stream (default: %(default)s)")

    from server.testing.fake_upstream import cli as fake_cli

    fake = commands.add_parser("fake-upstream", help="run the fault-injecting fake model server")
    fake_cli.add_arguments(fake)

    from server.probe import cli as probe_cli

    probe = commands.add_parser("probe", help="is this endpoint really streaming? (a verdict "
                                "with numbers, and a picture)")
    probe_cli.add_arguments(probe)

    from server.keys import cli as keys_cli

    keys = commands.add_parser("keys", help="make API keys; manage run-time keys in Redis")
    keys_cli.add_arguments(keys)

    args = parser.parse_args(argv)
    if args.command == "probe":
        return probe_cli.run_from_args(args)
    if args.command == "fake-upstream":
        fake_cli.run_from_args(args)
        return 0
    if args.command == "keys":
        return keys_cli.run_from_args(args)
    return _serve(args)


def _workers(text: str) -> int:
    from server.serving.launch import workers_from

    try:
        return workers_from(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count ≥ 1 or 'auto', got {text!r}") from None


def _serve(args: argparse.Namespace) -> int:
    from server.serving.launch import configure_logging, hypercorn_config, run

    if args.config:
        os.environ["SLUICE_CONFIG"] = os.path.abspath(args.config)  # the workers read it
    try:
        for backend in load_settings(os.environ).backends:
            api_key_from_env(backend, os.environ)  # as the app will, before anything forks
    except ConfigError as error:
        print(f"sluice: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    return run(hypercorn_config(args.bind, args.workers), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
