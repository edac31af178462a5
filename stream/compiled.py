"""The slice's hot modules compiled to C extensions with Cython, loaded in their place.

The worker's CPU per event is Python run per event and per touched user over dicts, lists and
msgspec structs, spread over a dozen modules with no function above a tenth of it
(docs/benchmarks.md). Cython compiles those modules *as they are* (pure Python mode: the
``.py`` files are the only source; their annotations type the locals) into extensions that
run the same code without the interpreter's dispatch loop: 10-27% less CPU per event in the
slice, in A/B runs on this machine (docs/benchmarks.md, twenty-third session).

``appetence compiled build`` (``make`` runs it) compiles each module of ``MODULES``
into ``stream/compiled_modules/`` with a manifest of the source each was built from (its
SHA-256), and writes a ``.pth`` file into the environment's site-packages that calls
``install()`` at interpreter start. ``install()`` puts ``CompiledFinder`` first on
``sys.meta_path``: it loads a module's extension only while the module's source is exactly
the one it was built from, so an edited module runs as plain Python until the next build
(never a stale extension), and every process of the environment (workers, tests, the
bench) runs the same code. ``APPETENCE_COMPILED=0`` turns it off for a process: profilers
(py-spy, cProfile) see the Python functions only then. Without a C compiler or the Python
headers nothing is built and everything runs as plain Python.

A compiled module keeps its source's ``__file__`` (paths next to it, doctests and
tracebacks' line numbers stay right); ``__compiled__`` names the extension.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: The modules compiled: the slice (processors), audience scoring and forget filtering, and
#: the state store with its record codec, i.e. all the Python the worker runs per event and
#: per touched user. Not the numba kernels (numba compiles Python functions itself), the
#: evaluators and the simulator (offline), nor I/O shells (their time is in the libraries).
MODULES = (
    "processors.audiences",
    "processors.banners",
    "processors.catalog",
    "processors.cooccurrence",
    "processors.decay",
    "processors.events",
    "processors.forget",
    "processors.loyalty",
    "processors.pipeline",
    "processors.popularity",
    "processors.profile",
    "processors.ranking",
    "processors.recommend",
    "processors.slates",
    "processors.user_state",
    "state.records",
    "state.tables",
)

BUILD_DIR = Path(__file__).with_name("compiled_modules")
MANIFEST = BUILD_DIR / "manifest.json"
SWITCH = "APPETENCE_COMPILED"  # false: plain Python in this process (Settings.compiled)
_OFF = ("0", "false", "f", "no", "n", "off")  # what pydantic reads as false
PTH_NAME = "appetence_compiled.pth"
#: What the .pth file runs at interpreter start (a missing or broken project is skipped).
PTH_LINE = (
    'import sys; exec("try:\\n    import stream.compiled as _c\\nexcept ImportError:\\n'
    '    pass\\nelse:\\n    _c.install()")\n'
)


def _abi() -> str:
    """What an extension is built for: this interpreter's extension suffix."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(path: Path = MANIFEST) -> dict[str, Any] | None:
    """The modules built for this interpreter (None: nothing usable was built)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("abi") != _abi():
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

    def __init__(self, manifest: dict[str, Any], build_dir: Path = BUILD_DIR) -> None:
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
    return next((f for f in sys.meta_path if isinstance(f, CompiledFinder)), None)


def install() -> CompiledFinder | None:
    """Put the finder first on ``sys.meta_path`` (once), unless ``APPETENCE_COMPILED=0`` or
    nothing was built for this interpreter. Modules imported before stay as they are."""
    if os.environ.get(SWITCH, "1").strip().lower() in _OFF:
        return None
    finder = installed()
    if finder is not None:
        return finder
    manifest = _read_manifest()
    if not manifest:
        return None
    finder = CompiledFinder(manifest)
    sys.meta_path.insert(0, finder)
    return finder


def status() -> dict[str, Any]:
    """What this process runs: the modules built, those built from their current source
    (what any process of this environment loads compiled, unless switched off), those this
    one loaded compiled, and those it found stale."""
    finder = installed()
    manifest = _read_manifest() or {}
    fresh = [
        module
        for module, entry in manifest.items()
        if _source_path(module).is_file()
        and source_digest(_source_path(module)) == entry.get("source_sha256")
    ]
    return {
        "compiled_modules_built": len(manifest),
        "compiled_modules_fresh": sorted(fresh),
        "compiled_modules_loaded": sorted(finder.loaded) if finder else [],
        "compiled_modules_stale": sorted(set(finder.stale)) if finder else [],
        "compiled_switch": os.environ.get(SWITCH, "1"),
    }


#: Where the project's packages are (``stream``'s parent): modules' sources are found there
#: without importing them.
ROOT = Path(__file__).resolve().parent.parent


def _source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _toolchain() -> tuple[list[str], list[str]]:
    """The Cython and C compiler commands (read here, in one thread: ``sysconfig``'s lazy
    set-up is not thread-safe)."""
    cython = [sys.executable, "-m", "cython", "-3", "-X", "binding=True"]
    include = sysconfig.get_paths()["include"]
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    return cython, [*compiler, "-shared", "-fPIC", "-O2", f"-I{include}"]


def _compile_one(
    module: str, source: Path, work: Path, abi: str, toolchain: tuple[list[str], list[str]]
) -> tuple[str, str | None]:
    """Cython, then the C compiler: (module, None) or (module, the error)."""
    c_file = work / f"{module}.c"
    extension = work / f"{module}{abi}"
    cython, compiler = toolchain
    steps = [
        [*cython, str(source), "-o", str(c_file)],
        [*compiler, str(c_file), "-o", str(extension)],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
        except OSError as error:
            return module, f"{step[0]}: {error}"
        if done.returncode != 0:
            return module, (done.stderr or done.stdout).strip()[-2000:]
    return module, None


def build(
    modules: Sequence[str] = MODULES,
    jobs: int | None = None,
    build_dir: Path = BUILD_DIR,
    root: Path = ROOT,
    hook: bool = True,
) -> dict[str, Any]:
    """Compile the modules whose source changed since the last build (all the first time)
    into ``build_dir``, update its manifest, and (``hook``) write the ``.pth`` file that
    installs the finder in every process of this environment. Returns what was built and
    what failed."""
    build_dir.mkdir(exist_ok=True)
    manifest_path = build_dir / MANIFEST.name
    previous = _read_manifest(manifest_path) or {}
    wanted = {module: _source_path(module, root) for module in modules}
    digests = {module: source_digest(path) for module, path in wanted.items()}
    manifest = {
        module: entry
        for module, entry in previous.items()
        if module in wanted
        and entry.get("source_sha256") == digests[module]
        and (build_dir / str(entry.get("file", ""))).is_file()
    }
    todo = [module for module in wanted if module not in manifest]
    failed: dict[str, str] = {}
    abi, toolchain = _abi(), _toolchain()
    with tempfile.TemporaryDirectory(prefix="appetence-cython-") as scratch:
        work = Path(scratch)
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            results = list(
                pool.map(lambda m: _compile_one(m, wanted[m], work, abi, toolchain), todo)
            )
        for module, error in results:
            if error is not None:
                failed[module] = error
                continue
            name = f"{module}{abi}"
            os.replace(work / name, build_dir / name)
            manifest[module] = {"file": name, "source_sha256": digests[module]}
    manifest_path.write_text(
        json.dumps({"abi": abi, "modules": dict(sorted(manifest.items()))}, indent=1) + "\n"
    )
    pth = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    if hook and (not pth.exists() or pth.read_text() != PTH_LINE):
        pth.write_text(PTH_LINE)
    return {"built": sorted(set(todo) - set(failed)), "failed": failed, "held": len(manifest)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "build":
        try:
            import Cython  # noqa: F401
        except ImportError:
            print("compiled modules: Cython is not installed; the modules run as plain Python")
            return 1
        result = build()
        for module, error in result["failed"].items():
            print(f"compiled modules: {module} not compiled (it runs as plain Python):\n{error}")
        print(
            f"compiled modules: {len(result['built'])} built, {result['held']} of "
            f"{len(MODULES)} in {BUILD_DIR}"
        )
        return 1 if result["failed"] else 0
    if command == "status":
        print(json.dumps(status(), indent=1))
        return 0
    print("usage: python -m stream.compiled [build|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
