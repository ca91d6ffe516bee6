"""Stages: each reads the catalog and files and writes facts, results and runs (scan ... overrides)."""
