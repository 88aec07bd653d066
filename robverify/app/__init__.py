"""The top floor under ``robverify/cli.py``: the commands' library side, the study runner and the progress bars.
The only package (with the CLI) that imports ``robverify``, ``trainers`` and ``properties`` together."""
