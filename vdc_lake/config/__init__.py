"""Configuration: bundled defaults, config files, and the rules every value is checked against."""
