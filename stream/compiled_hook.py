"""The import hook of the compiled modules (``stream/compiled.py``), standard library only.

``appetence compiled build`` copies this file into the environment's site-packages as
``_appetence_compiled_hook.py``, with a call of ``install`` for the build directory appended,
and a ``.pth`` file imports that copy at interpreter start: the hook is in place before
anything imports the project, and it imports nothing of the project itself (so a checkout
run with ``python -m stream.cli`` from its own folder runs its own ``stream`` package).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

SWITCH = "APPETENCE_COMPILED"  # false: plain Python in this process (Settings.compiled)
_OFF = ("0", "false", "f", "no", "n", "off")  # what pydantic reads as false


def abi() -> str:
    """What an extension is built for: this interpreter's extension suffix."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The modules built for this interpreter (None: nothing usable was built)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("abi") != abi():
        return None  # built by another interpreter (the venv was remade): not loadable
    modules = manifest.get("modules")
    return modules if isinstance(modules, dict) else None


class _CompiledLoader(importlib.machinery.ExtensionFileLoader):
    """An extension loaded under its source's ``__file__`` (set before the module body runs,
    which may read paths next to it)."""

    def __init__(self, name: str, path: str, source: str) -> None:
        super().__init__(name, path)
        self.source = source

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = super().create_module(spec)
        module.__file__ = self.source
        module.__compiled__ = self.path  # type: ignore[attr-defined]
        return module


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension of a module of the manifest, only while the module's
    source (as the other finders locate it) is the one it was built from."""

    def __init__(self, manifest: dict[str, Any], build_dir: Path) -> None:
        self.manifest = manifest
        self.build_dir = build_dir
        self.loaded: list[str] = []
        self.stale: list[str] = []  # modules whose source changed since the build

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        entry = self.manifest.get(fullname)
        if entry is None:
            return None
        source_spec = self._source_spec(fullname, path, target)
        if source_spec is None or not source_spec.origin:
            return None
        try:
            digest = source_digest(Path(source_spec.origin))
        except OSError:
            return None
        extension = self.build_dir / str(entry.get("file", ""))
        if digest != entry.get("source_sha256") or not extension.is_file():
            self.stale.append(fullname)
            return None
        loader = _CompiledLoader(fullname, str(extension), source_spec.origin)
        spec = importlib.machinery.ModuleSpec(fullname, loader, origin=str(extension))
        spec.has_location = True
        spec.submodule_search_locations = source_spec.submodule_search_locations
        self.loaded.append(fullname)
        return spec

    def _source_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def installed() -> CompiledFinder | None:
    """The finder in place (installed by this module or by its copy in site-packages)."""
    for finder in sys.meta_path:
        if type(finder).__name__ == CompiledFinder.__name__ and hasattr(finder, "manifest"):
            return finder  # type: ignore[return-value]
    return None


def switched_off() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() in _OFF


def install(build_dir: Path) -> CompiledFinder | None:
    """Put a finder for ``build_dir``'s modules first on ``sys.meta_path`` (once), unless
    ``APPETENCE_COMPILED`` is false or nothing there was built for this interpreter.
    Modules imported before stay as they are."""
    if switched_off():
        return None
    finder = installed()
    if finder is not None:
        return finder
    manifest = read_manifest(build_dir / "manifest.json")
    if not manifest:
        return None
    finder = CompiledFinder(manifest, build_dir)
    sys.meta_path.insert(0, finder)
    return finder
