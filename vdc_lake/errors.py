"""Typed errors. Library code raises these; only cli.py turns them into click errors."""


class VdcLakeError(Exception):
    """Base class: every message says what the user can do next."""


class CatalogLockedError(VdcLakeError):
    """Another process holds the catalog's writer lock."""


class CatalogNotFoundError(VdcLakeError):
    """The catalog file does not exist (and the command only reads)."""


class ConfigError(VdcLakeError):
    """A configuration file or value is invalid."""


class PlanError(VdcLakeError):
    """An apply or restore request cannot be planned as asked."""


class StageError(VdcLakeError):
    """A stage cannot run with the catalog's current content."""
