"""The top floor under ``robverify/cli.py``: the commands' library side and the study runner.
The only package (with the CLI) that imports ``robverify``, ``trainers`` and ``properties`` together."""
