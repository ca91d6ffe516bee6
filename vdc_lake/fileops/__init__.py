"""File operations on one file at a time: header facts, hashing, decode checks, image operations, path confinement."""
