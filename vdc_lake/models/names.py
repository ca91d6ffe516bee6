"""The network names birder's registry knows, without importing birder (or torch).

Reading a birder file name (`import`, `models`) needs only the list of registered network
names, but importing birder to get it costs ~0.75 GiB of RSS and seconds (it imports torch).
The list for the birder version this package was tested with ships as
`birder_networks.txt` (first line: `# birder VERSION`); when the installed birder is another
version, the names come from birder's registry itself, as before. Regenerate the file with
`python -m vdc_lake.models.names` after upgrading birder (a test checks that it agrees).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from pathlib import Path

NAMES_FILE = Path(__file__).with_name("birder_networks.txt")


def import_birder_quietly() -> None:
    """Import birder with torch's "No CUDA runtime is found" log line silenced: on a machine
    without CUDA it is noise printed in front of every command that loads a model."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import birder  # noqa: F401
    finally:
        logger.setLevel(level)


def registry_networks() -> tuple[str, ...]:
    """Lower-case names of every classification network (and alias) in birder's registry,
    longest first (names prefix each other: resnet_v1_50 / resnet_v1_50_c1)."""
    import_birder_quietly()
    from birder.model_registry import Task, registry

    names = set(registry.list_models(task=Task.IMAGE_CLASSIFICATION)) | set(registry.name_aliases)
    return tuple(sorted(names, key=lambda n: (-len(n), n)))


def _installed_birder() -> str | None:
    try:
        return importlib.metadata.version("birder")
    except importlib.metadata.PackageNotFoundError:
        return None


def _shipped() -> tuple[str | None, tuple[str, ...]]:
    try:
        lines = NAMES_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, ()
    if not lines or not lines[0].startswith("# birder "):
        return None, ()
    return lines[0][len("# birder "):].strip(), tuple(line for line in lines[1:] if line)


@functools.cache
def known_networks() -> tuple[str, ...]:
    """Lower-case names of every classification network (and alias) birder knows, longest
    first: from the shipped list when it was made for the installed birder, else the registry."""
    version, names = _shipped()
    if names and version == _installed_birder():
        return names
    return registry_networks()


def write_names_file(path: Path = NAMES_FILE) -> int:
    """Write the installed birder's network names to `path`; returns how many."""
    names = registry_networks()
    path.write_text(f"# birder {_installed_birder()}\n" + "\n".join(names) + "\n", encoding="utf-8")
    return len(names)


if __name__ == "__main__":
    print(f"{write_names_file()} network names written to {NAMES_FILE}")
