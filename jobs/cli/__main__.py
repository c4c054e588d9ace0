"""``python -m jobs.cli``: the interq command line."""

from jobs.cli.main import main

main()
