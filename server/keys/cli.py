"""``sluice keys``: make API keys, and manage the run-time ones in the configured store.

    sluice keys new --name team-a --rpm 60        # a key for the config file: prints the key
                                                  # once and its [[auth.keys]] table (hash only)
    sluice keys create --name team-b --tpm 100000 # a run-time key, in Redis: printed once
    sluice keys list
    sluice keys show ID
    sluice keys update ID --rpm 120 --models llama3,qwen
    sluice keys revoke ID
    sluice keys usage ID [--period 2026-01]

Every command but ``new`` works on the store of ``[state]`` (``--config``
or ``$SLUICE_CONFIG``), which must be Redis: a memory store lives inside one
server process. The admin API (`server.keys.admin_api`) does the same over
HTTP. Output is JSON, except ``new``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from server.config import ConfigError, Settings, load_settings
from server.keys.admin import KeyAdmin, KeyNotFound, StaticKey
from server.keys.record import KeyFieldError, KeyRecord, key_fields
from server.keys.secret import new_key
from server.limits.redis_store import open_redis_store
from server.limits.store import KeyNameTaken, StoreUnavailable

_NUMBERS = (("rpm", float), ("burst", int), ("tpm", int), ("max_streams", int),
            ("daily_tokens", int), ("monthly_tokens", int), ("monthly_spend", float))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (default: $SLUICE_CONFIG)")
    commands = parser.add_subparsers(dest="keys_command", required=True)
    for name, about in (("new", "make a key for the config file (prints its table)"),
                        ("create", "make a run-time key in the store"),
                        ("update", "change a run-time key")):
        command = commands.add_parser(name, help=about)
        if name == "update":
            command.add_argument("id")
        command.add_argument("--name", required=name != "update")
        command.add_argument("--models", help="comma-separated model names (default: all)")
        command.add_argument("--alias", action="append", default=[], metavar="ASKED=SERVED")
        for field, kind in _NUMBERS:
            command.add_argument("--" + field.replace("_", "-"), type=kind)
        command.add_argument("--expires", help="ISO 8601 date-time (UTC if no zone)")
        command.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    commands.add_parser("list", help="every key (never a hash)")
    for name in ("show", "revoke"):
        commands.add_parser(name, help=f"{name} a key").add_argument("id")
    usage = commands.add_parser("usage", help="a key's usage per model, for a day or month")
    usage.add_argument("id")
    usage.add_argument("--period", help="YYYY-MM or YYYY-MM-DD (default: this month)")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        if args.keys_command == "new":
            return _new(_fields(args))
        if args.config:
            os.environ["SLUICE_CONFIG"] = os.path.abspath(args.config)
        settings = load_settings(os.environ)
        if settings.state.backend != "redis":
            return _fail('run-time keys need [state] backend = "redis" (a memory store lives '
                         "inside one server); for a key in the config file: sluice keys new", 2)
        return trio.run(_run, args, settings)
    except ConfigError as error:
        return _fail(f"configuration error: {error}", 2)
    except (KeyFieldError, ValueError) as error:
        return _fail(f"{error}", 2)


def _new(document: dict[str, Any]) -> int:
    """A key for the config file: the key itself once, then its table."""
    fields = key_fields(document)
    key = new_key()
    record = KeyRecord(id=key.id, hash=key.hash, created_at=0.0, **fields)
    print(f"# The key (shown once; give it to its user):\n# {key.text}\n")
    print(_toml_table(record, document))
    return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    operations: dict[str, Callable[[KeyAdmin], Awaitable[Any]]] = {
        "create": lambda admin: _created(admin.create(_fields(args))),
        "list": lambda admin: _listed(admin.list()),
        "show": lambda admin: _public(admin.get(args.id)),
        "update": lambda admin: _public(admin.update(args.id, _fields(args))),
        "revoke": lambda admin: _public(admin.revoke(args.id)),
        "usage": lambda admin: admin.usage(args.id, args.period),
    }
    async with open_redis_store(settings.state) as store:
        # Caught in here: leaving coredis's block, an error would come wrapped in a group.
        return await _report(operations[args.keys_command](KeyAdmin(settings.auth.keys, store)),
                             args)


async def _report(operation: Awaitable[Any], args: argparse.Namespace) -> int:
    try:
        result = await operation
    except KeyNotFound:
        return _fail(f"no key has the id {args.id!r}", 1)
    except StaticKey:
        return _fail("that key comes from the config file: change it there", 1)
    except KeyNameTaken as error:
        return _fail(f"another key is named {error}", 1)
    except StoreUnavailable as error:
        return _fail(f"the store is unavailable: {error}", 1)
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


async def _created(made: Awaitable[tuple[KeyRecord, str]]) -> dict[str, Any]:
    record, key = await made
    return {**record.public(), "key": key}


async def _listed(records: Awaitable[list[KeyRecord]]) -> list[dict[str, Any]]:
    return [record.public() for record in await records]


async def _public(record: Awaitable[KeyRecord]) -> dict[str, Any]:
    return (await record).public()


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the command line set (only those: an update changes nothing else)."""
    document: dict[str, Any] = {}
    if args.name is not None:
        document["name"] = args.name
    if args.models is not None:
        document["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.alias:
        document["aliases"] = dict(_pair(pair, "--alias") for pair in args.alias)
    for field, _ in _NUMBERS:
        if getattr(args, field) is not None:
            document[field] = getattr(args, field)
    if args.expires is not None:
        document["expires_at"] = args.expires
    if args.meta:
        document["metadata"] = dict(_pair(pair, "--meta") for pair in args.meta)
    return document


def _pair(text: str, option: str) -> tuple[str, str]:
    left, equals, right = text.partition("=")
    if not equals or not left or not right:
        raise ValueError(f"{option}: expected NAME=VALUE, got {text!r}")
    return left, right


def _toml_table(record: KeyRecord, document: dict[str, Any]) -> str:
    """The ``[[auth.keys]]`` table for a key: its id, hash and the fields given."""
    lines = ["[[auth.keys]]", f'id = "{record.id}"', f'hash = "{record.hash}"']
    for field, value in document.items():
        if field == "expires_at":
            value = record.expires_at
        lines.append(f"{field} = {_toml_value(value)}")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    return repr(value)


def _fail(message: str, status: int) -> int:
    print(f"sluice keys: {message}", file=sys.stderr)
    return status
