"""Helpers shared by the repository tools: the package list, read from the pyproject files.

Standard library only (plus ``tomli`` on Python 3.10), so ``changes.py`` runs in CI without the
workspace environment.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - CI runs the tools on 3.11+
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_KERNELS_DIR = "shared-kernels"
PACKAGES_DIR = "packages"

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_VERSION_LINE = re.compile(r"""^(__version__\s*=\s*)(["'])([^"']+)\2""", re.MULTILINE)


class ToolError(Exception):
    """A failure with a message meant for the user (printed without a traceback)."""


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Package:
    """One distribution of the workspace."""

    dist: str  # distribution name as written in pyproject.toml
    path: str  # folder relative to the repository root, posix style ("packages/sla")
    import_name: str
    version_file: str | None  # relative to the package folder ("src/sla/__init__.py"); None: unknown
    dependencies: frozenset[str]  # normalised names of everything it requires (extras included)

    @property
    def key(self) -> str:
        return normalize(self.dist)


def _requirement_names(reqs: list[str]) -> set[str]:
    out = set()
    for req in reqs:
        m = _REQ_NAME.match(req)
        if m:
            out.add(normalize(m.group(1)))
    return out


def read_package(root: Path, rel: str) -> Package:
    """Read ``<root>/<rel>/pyproject.toml``."""
    pyproject = root / rel / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ToolError(f"cannot read {pyproject}: {exc}") from exc
    project = data.get("project", {})
    name = project.get("name")
    if not name:
        raise ToolError(f"{pyproject} has no [project] name")
    tool = data.get("tool", {})
    version_file = tool.get("hatch", {}).get("version", {}).get("path") or tool.get("scikit-build", {}).get(
        "metadata", {}
    ).get("version", {}).get("input")
    if not version_file:
        inits = sorted((root / rel / "src").glob("*/__init__.py"))
        version_file = inits[0].relative_to(root / rel).as_posix() if len(inits) == 1 else None
    parts = Path(version_file).parts if version_file else ()
    import_name = parts[-2] if len(parts) >= 2 else normalize(name).replace("-", "_")
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return Package(
        dist=name,
        path=rel,
        import_name=import_name,
        version_file=version_file,
        dependencies=frozenset(_requirement_names(reqs) - {normalize(name)}),
    )


def load_packages(root: Path = REPO_ROOT) -> list[Package]:
    """shared-kernels plus every ``packages/<dir>`` that has a pyproject.toml, sorted by path."""
    rels = []
    if (root / SHARED_KERNELS_DIR / "pyproject.toml").is_file():
        rels.append(SHARED_KERNELS_DIR)
    pkg_root = root / PACKAGES_DIR
    if pkg_root.is_dir():
        rels += [
            f"{PACKAGES_DIR}/{d.name}" for d in sorted(pkg_root.iterdir()) if (d / "pyproject.toml").is_file()
        ]
    return [read_package(root, rel) for rel in rels]


def find_package(packages: list[Package], dist: str) -> Package:
    """The package whose distribution name (or folder name) is ``dist``."""
    key = normalize(dist)
    for p in packages:
        if p.key == key:
            return p
    for p in packages:
        if normalize(Path(p.path).name) == key:
            return p
    known = ", ".join(sorted(p.dist for p in packages))
    raise ToolError(f"no package with distribution name {dist!r}; known: {known}")


def read_version(path: Path) -> str:
    """The ``__version__ = "..."`` string of a Python file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc}") from exc
    m = _VERSION_LINE.search(text)
    if not m:
        raise ToolError(f'{path} has no line `__version__ = "..."`')
    return m.group(3)


def replace_version(text: str, new: str) -> str:
    """``text`` with its ``__version__`` string set to ``new`` (exactly one occurrence required)."""
    new_text, n = _VERSION_LINE.subn(lambda m: f"{m.group(1)}{m.group(2)}{new}{m.group(2)}", text, count=1)
    if n != 1:
        raise ToolError('no `__version__ = "..."` line to update')
    return new_text


def run_main(main) -> None:
    """Call ``main()`` and turn a ToolError into ``error: ...`` on stderr and exit status 1."""
    try:
        code = main()
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
