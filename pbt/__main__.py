"""``python -m pbt`` is the ``pbt`` command."""

from pbt.cli import main

main()
