"""``python -m server.testing.fake_upstream``: the fake upstream without the rest of the CLI."""

from __future__ import annotations

import argparse

from server.testing.fake_upstream.cli import add_arguments, run_from_args


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m server.testing.fake_upstream",
        description="Fake OpenAI-compatible upstream."
    )
    add_arguments(parser)
    run_from_args(parser.parse_args())


if __name__ == "__main__":
    main()
