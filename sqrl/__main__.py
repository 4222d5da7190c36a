"""``python -m sqrl``: the ``sqrl`` command line.

The command line sits on top of every layer (``recipes.cli``); this entry point is the one file of the core
that reaches it, lazily, at run time (tests/test_layers.py allows exactly this import).
"""
import sys


def _main() -> int:
    from recipes.cli import main

    return main()


sys.exit(_main())
