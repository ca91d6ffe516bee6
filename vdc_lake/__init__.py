"""vdc-lake: curate large image datasets with every fact and decision in one DuckDB catalog."""

__version__ = "0.1.0"
