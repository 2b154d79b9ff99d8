"""Command-line interface.

Each subcommand module exposes ``main(argv: list[str] | None) -> int``.
"""
