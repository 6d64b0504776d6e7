"""Compile (once) and load the C++ bridge in ``_bridge.cpp``."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

BRIDGE_SOURCE = Path(__file__).with_name("_bridge.cpp")
_CXXFLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-Wall")


def cache_dir() -> Path:
    """Return caloforge's cache directory (``$CALOFORGE_CACHE_DIR`` or ``~/.cache/caloforge``)."""
    env = os.environ.get("CALOFORGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "caloforge"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "g++"))


def _bridge_key(geant4_library: Path, geant4_version: str) -> str:
    # The bridge resolves symbols in (and records the path of) this exact library,
    # so its identity is part of the key along with the source and the compiler.
    stat = geant4_library.stat()
    digest = hashlib.sha256()
    digest.update(BRIDGE_SOURCE.read_bytes())
    digest.update(f"{geant4_version}|{geant4_library.resolve()}|{stat.st_size}".encode())
    digest.update(" ".join([*_compiler(), *_CXXFLAGS]).encode())
    return digest.hexdigest()[:16]


def build_bridge(geant4_library: Path, geant4_version: str) -> Path:
    """Return the path of the compiled bridge, compiling it on first use.

    The shared object is linked against ``geant4_library`` (the geant4_pybind
    extension module) so that, once Python has imported that module, the dynamic
    loader reuses it instead of needing ``RTLD_GLOBAL``. Builds are serialised with
    a file lock so that several worker processes can start at the same time.
    """
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"g4bridge-{_bridge_key(geant4_library, geant4_version)}.so"
    if target.exists():
        return target
    with open(directory / "g4bridge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # built by another process while we waited
            return target
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            partial = Path(tmp) / target.name
            lib_dir = str(geant4_library.parent.resolve())
            cmd = [
                *_compiler(),
                *_CXXFLAGS,
                str(BRIDGE_SOURCE),
                "-o",
                str(partial),
                f"-L{lib_dir}",
                f"-l:{geant4_library.name}",
                f"-Wl,-rpath,{lib_dir}",
            ]
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except FileNotFoundError as exc:
                raise RuntimeError(
                    f"no C++ compiler found ({cmd[0]!r}); the Geant4 bridge needs g++ "
                    "(set $CXX to use another compiler)"
                ) from exc
            if result.returncode != 0:
                raise RuntimeError(f"compiling the Geant4 bridge failed:\n{shlex.join(cmd)}\n{result.stderr}")
            os.replace(partial, target)
    return target


def load_bridge(geant4_library: Path, geant4_version: str) -> ctypes.CDLL:
    """Compile if needed, load the bridge and declare its C signatures."""
    lib = ctypes.CDLL(str(build_bridge(geant4_library, geant4_version)))
    lib.cf_register_datafree_em.restype = ctypes.c_int
    lib.cf_register_datafree_em.argtypes = []
    lib.cf_attach_collector.restype = ctypes.c_int
    lib.cf_attach_collector.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.cf_clear_hits.restype = None
    lib.cf_clear_hits.argtypes = []
    lib.cf_hit_count.restype = ctypes.c_size_t
    lib.cf_hit_count.argtypes = []
    lib.cf_hit_data.restype = ctypes.POINTER(ctypes.c_double)
    lib.cf_hit_data.argtypes = []
    return lib
