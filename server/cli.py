"""The ``sluice`` command.

    sluice serve [--config FILE] [--bind HOST:PORT] [--workers N] [--log-level LEVEL]
    sluice fake-upstream [--port 9000] [--scenario tokens=20,tps=50,...]
    sluice keys {new,create,list,show,update,revoke,usage} ...   (server.keys.cli)

``serve`` runs `server.app:app` through hypercorn's trio worker, with the
settings of `server.serving.launch.hypercorn_config`. The configuration is checked
here first, so a bad file stops the command with one line naming the key.
"""

from __future__ import annotations

import argparse
import os
import sys

from server.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway through hypercorn (trio)")
    serve.add_argument("--config", help="TOML settings file (default: $SLUICE_CONFIG)")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                       help="debug adds a line per completed stream (default: %(default)s)")

    from server.testing.fake_upstream import cli as fake_cli

    fake = commands.add_parser("fake-upstream", help="run the fault-injecting fake model server")
    fake_cli.add_arguments(fake)

    from server.keys import cli as keys_cli

    keys = commands.add_parser("keys", help="make API keys; manage run-time keys in Redis")
    keys_cli.add_arguments(keys)

    args = parser.parse_args(argv)
    if args.command == "fake-upstream":
        fake_cli.run_from_args(args)
        return 0
    if args.command == "keys":
        return keys_cli.run_from_args(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from server.serving.launch import configure_logging, hypercorn_config, run

    if args.config:
        os.environ["SLUICE_CONFIG"] = os.path.abspath(args.config)  # the workers read it
    try:
        settings = load_settings(os.environ)
    except ConfigError as error:
        print(f"sluice: configuration error: {error}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    config = hypercorn_config(args.bind, args.workers,
                              send_stall_timeout=settings.server.send_stall_timeout)
    return run(config, settings.server.drain_seconds, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
