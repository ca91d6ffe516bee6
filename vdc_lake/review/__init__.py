"""Review: the registry of decisions, status, the report and notebook helpers."""
