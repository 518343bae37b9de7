"""Subcommands of ``recist-seg``; importing this package registers them with the CLI."""

from . import geometry, learning  # noqa: F401
