"""The compiled modules (stream/compiled.py): loaded only while built from the source as it
is, and the slice computes exactly what it computes as plain Python."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream import compiled, compiled_hook

ROOT = Path(__file__).resolve().parents[2]

needs_toolchain = pytest.mark.skipif(
    importlib.util.find_spec("Cython") is None
    or shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None,
    reason="Cython or a C compiler is missing (the modules run as plain Python)",
)


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """A package ``pkgc`` with one module to compile, importable from ``tmp_path``."""
    source = tmp_path / "pkgc"
    source.mkdir()
    (source / "__init__.py").write_text("")
    (source / "data.txt").write_text("next to the source\n")
    (source / "mod.py").write_text(
        "from pathlib import Path\n"
        "NEXT = (Path(__file__).parent / 'data.txt').read_text().strip()\n"
        "def total(values: list[float], start: float = 0.0) -> float:\n"
        "    for value in values:\n"
        "        start += value\n"
        "    return start\n"
    )
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name == "pkgc" or name.startswith("pkgc.")]:
        del sys.modules[name]


def _import_fresh(finder: compiled.CompiledFinder, name: str) -> object:
    sys.modules.pop(name, None)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)


@needs_toolchain
def test_a_module_runs_compiled_only_while_its_source_is_the_one_built(package: Path) -> None:
    build_dir = package / "build"
    result = compiled.build(["pkgc.mod"], build_dir=build_dir, root=package, hook=False)
    assert result["built"] == ["pkgc.mod"] and not result["failed"]
    manifest = compiled._read_manifest(build_dir / "manifest.json")
    assert manifest is not None
    finder = compiled.CompiledFinder(manifest, build_dir)

    module = _import_fresh(finder, "pkgc.mod")
    source = package / "pkgc" / "mod.py"
    assert str(getattr(module, "__compiled__", "")).startswith(str(build_dir))
    assert Path(module.__file__ or "") == source  # the source's, before its body ran:
    assert module.NEXT == "next to the source"  # type: ignore[attr-defined]
    assert module.total([1.0, 2.5]) == 3.5  # type: ignore[attr-defined]
    assert finder.loaded == ["pkgc.mod"]

    # an edited source runs as itself, never as the stale extension
    source.write_text(source.read_text().replace("start += value", "start += 2 * value"))
    module = _import_fresh(finder, "pkgc.mod")
    assert not hasattr(module, "__compiled__")
    assert module.total([1.0, 2.5]) == 7.0  # type: ignore[attr-defined]
    assert finder.stale == ["pkgc.mod"]

    # the next build compiles only what changed
    again = compiled.build(["pkgc.mod"], build_dir=build_dir, root=package, hook=False)
    assert again["built"] == ["pkgc.mod"]
    unchanged = compiled.build(["pkgc.mod"], build_dir=build_dir, root=package, hook=False)
    assert unchanged["built"] == [] and unchanged["held"] == 1


def test_a_manifest_of_another_interpreter_or_the_switch_off_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "manifest.json"
    entry = {"file": "x.so", "source_sha256": "0"}
    manifest.write_text(json.dumps({"abi": ".cpython-27.so", "modules": {"pkgc.mod": entry}}))
    assert compiled._read_manifest(manifest) is None
    manifest.write_text(json.dumps({"abi": compiled_hook.abi(), "modules": {"pkgc.mod": entry}}))
    assert compiled._read_manifest(manifest) == {"pkgc.mod": entry}
    monkeypatch.setenv(compiled.SWITCH, "false")
    assert compiled.install() is None


def test_a_missing_extension_falls_back_to_the_source(package: Path) -> None:
    source = package / "pkgc" / "mod.py"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest = {"pkgc.mod": {"file": "gone.so", "source_sha256": digest}}
    finder = compiled.CompiledFinder(manifest, package / "build")
    module = _import_fresh(finder, "pkgc.mod")
    assert not hasattr(module, "__compiled__") and module.total([2.0]) == 2.0  # type: ignore[attr-defined]


def test_a_new_interpreter_has_the_hook_and_has_not_imported_the_project() -> None:
    """The hook (a stdlib-only copy in site-packages) is in place before anything imports
    the project, and imports none of it: ``python -m stream.cli`` from another checkout
    sharing this environment runs that checkout's ``stream``."""
    if not compiled.status()["compiled_modules_built"] or compiled_hook.switched_off():
        pytest.skip("the compiled modules are not built here (`make` builds them), or off")
    probe = (
        "import sys; print(sorted(m for m in ('stream', 'processors', 'state') if m in "
        "sys.modules), 'CompiledFinder' in [type(f).__name__ for f in sys.meta_path])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[0] == "[] True"


_DIGEST = """
import hashlib, json, sys
import msgspec
from processors.pipeline import SliceConfig, SliceProcessor
from processors.profile import profile_of
from processors.simulator import SimulationConfig, TrafficModel
from processors.slates import encode_slate
from state.records import pack_user_state
model = TrafficModel(SimulationConfig(seed=11), start_ms=1_700_000_000_000)
events = model.events()
processor = SliceProcessor(SliceConfig())
for record in model.catalog_records():
    processor.apply_catalog(record)
states, digest = {}, hashlib.sha256()
for size in (7, 300, 2_000, 40, 1_000):
    batch = [(0, next(events)) for _ in range(size)]
    result = processor.process_batch(batch, states, batch[-1][1].ts)
    for user_id in sorted(result.touched):
        state = result.touched[user_id]
        digest.update(user_id.encode() + pack_user_state(state))
        digest.update(msgspec.json.encode(profile_of(state)))
        for field, slate in sorted(result.slates.get(user_id, {}).items()):
            digest.update(field.encode() + encode_slate(slate))
    states.update(result.touched)
import processors.pipeline as p
print(json.dumps({"digest": digest.hexdigest(), "compiled": hasattr(p, "__compiled__")}))
"""


def _slice_digest(switch: str) -> dict[str, object]:
    env = {**os.environ, compiled.SWITCH: switch}
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_compiled_slice_computes_what_the_plain_one_does() -> None:
    """Cython types a module's locals by their annotations (a ``float`` one is a C double):
    every slate, profile and state record of 3,347 simulated events must be the same bytes
    either way."""
    plain = _slice_digest("0")
    built = _slice_digest("1")
    if not built["compiled"]:
        pytest.skip("the compiled modules are not built here (`make` builds them)")
    assert plain["compiled"] is False
    assert built["digest"] == plain["digest"]
