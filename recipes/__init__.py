"""Recipes: what composes stages, above ``sft/`` and ``grpo/`` and below the command line.

* ``stages``: the one stage runner (SFT, merge, GRPO, eval steps) with one rule for "done" and one for "fresh";
* ``pipeline``: ``sqrl pipeline``, the whole method in one command;
* ``compare``, ``compare_plan``, ``compare_report``: ``sqrl compare``, the paper's comparison, rows as data;
* ``bootstrap``: ``sqrl grpo``, building the GRPO start model from the SFT stages when the config says how;
* ``cli``: the ``sqrl`` command line on top of everything.
"""
