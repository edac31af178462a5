"""The slice's hot modules compiled to C extensions with Cython, loaded in their place.

The worker's CPU per event is Python run per event and per touched user over dicts, lists and
msgspec structs, spread over a dozen modules with no function above a tenth of it
(docs/benchmarks.md). Cython compiles those modules *as they are* (pure Python mode: the
``.py`` files are the only source; their annotations type the locals) into extensions that
run the same code without the interpreter's dispatch loop: 10-27% less CPU per event in the
slice, in A/B runs on this machine (docs/benchmarks-history.md, twenty-third session).

``appetence compiled build`` (``make`` runs it) compiles each module of ``MODULES``
into ``stream/compiled_modules/`` with a manifest of the source each was built from (its
SHA-256), and installs the import hook (``stream/compiled_hook.py``, copied into the
environment's site-packages with a ``.pth`` file that imports it at interpreter start). The
hook puts ``CompiledFinder`` first on ``sys.meta_path``: it loads a module's extension only
while the module's source is exactly the one it was built from, so an edited module runs as
plain Python until the next build (never a stale extension), and every process of the
environment (workers, tests, the bench) runs the same code. ``APPETENCE_COMPILED=0`` turns
it off for a process: profilers (py-spy, cProfile) see the Python functions only then.
Without a C compiler or the Python headers nothing is built and everything runs as plain
Python.

A compiled module keeps its source's ``__file__`` (paths next to it, doctests and
tracebacks' line numbers stay right); ``__compiled__`` names the extension.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream.compiled_hook import (
    SWITCH,
    CompiledFinder,
    abi,
    installed,
    read_manifest,
    source_digest,
    switched_off,
)

__all__ = ["MODULES", "SWITCH", "CompiledFinder", "build", "install", "installed", "status"]

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
HOOK_SOURCE = Path(__file__).with_name("compiled_hook.py")
HOOK_NAME = "_appetence_compiled_hook"  # the hook's copy in site-packages
PTH_NAME = "appetence_compiled.pth"
#: What the .pth file runs at interpreter start (a removed hook is skipped quietly).
PTH_LINE = f'import sys; exec("try:\\n    import {HOOK_NAME}\\nexcept Exception:\\n    pass")\n'


def _read_manifest(path: Path = MANIFEST) -> dict[str, Any] | None:
    return read_manifest(path)


def install(build_dir: Path = BUILD_DIR) -> CompiledFinder | None:
    """The hook for ``build_dir`` in this process (the copy in site-packages does this at
    interpreter start)."""
    from stream.compiled_hook import install as install_hook

    return install_hook(build_dir)


def _write_hook(build_dir: Path) -> None:
    """The hook's copy in site-packages, installing itself for ``build_dir``, and the
    ``.pth`` file that imports it (each rewritten only when it changed)."""
    site = Path(sysconfig.get_paths()["purelib"])
    hook = HOOK_SOURCE.read_text() + (
        "\n\n# Written by `appetence compiled build` (stream/compiled.py).\n"
        "try:\n"
        f"    install(Path({str(build_dir)!r}))\n"
        "except Exception:  # an interpreter must start whatever is wrong here\n"
        "    pass\n"
    )
    for path, text in ((site / f"{HOOK_NAME}.py", hook), (site / PTH_NAME, PTH_LINE)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


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
        "compiled_switch": "off" if switched_off() else "on",
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
    module: str, source: Path, work: Path, suffix: str, toolchain: tuple[list[str], list[str]]
) -> tuple[str, str | None]:
    """Cython, then the C compiler: (module, None) or (module, the error)."""
    c_file = work / f"{module}.c"
    extension = work / f"{module}{suffix}"
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
    installs the hook in every process of this environment. Returns what was built and
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
    suffix, toolchain = abi(), _toolchain()
    with tempfile.TemporaryDirectory(prefix="appetence-cython-") as scratch:
        work = Path(scratch)
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            results = list(
                pool.map(lambda m: _compile_one(m, wanted[m], work, suffix, toolchain), todo)
            )
        for module, error in results:
            if error is not None:
                failed[module] = error
                continue
            name = f"{module}{suffix}"
            os.replace(work / name, build_dir / name)
            manifest[module] = {"file": name, "source_sha256": digests[module]}
    manifest_path.write_text(
        json.dumps({"abi": suffix, "modules": dict(sorted(manifest.items()))}, indent=1) + "\n"
    )
    if hook:
        _write_hook(build_dir)
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
