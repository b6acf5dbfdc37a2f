"""The `hf-ckptkd` command: `main` (its subcommands) and `select` (the one with most options of its own).

`python -m hf_ckptkd.cli` runs it; nothing in the package imports this one.
"""

from .main import console_main, main

__all__ = ["console_main", "main"]
