"""`python -m vdc_lake.cli`: the console script."""

from vdc_lake.cli import main

main()
