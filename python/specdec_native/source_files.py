"""Source files available offline: the Python standard library's own sources (text for draft
vocabularies and draft-head training data), or any tree of files."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterator, List, Sequence

# Folders of tests, vendored packages and demos: not the code people write.
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
             "__pycache__", "ensurepip", "tkinter", "config-3"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path, suffixes: Sequence[str] = (".py",)) -> List[Path]:
    """The files under `root` ending in one of `suffixes`, in sorted order, outside SKIP_DIRS and
    hidden folders."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith(("config-", ".")))
        out.extend(Path(d) / f for f in sorted(files) if f.endswith(tuple(suffixes)))
    return out


def gather(sources: Sequence[os.PathLike], suffixes: Sequence[str] = (".py",)) -> List[Path]:
    """The files `sources` name: a file as it is, a directory's files ending in `suffixes`.
    ValueError for a path that does not exist or when no file is found."""
    out: List[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            out.extend(source_files(path, suffixes))
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    if not out:
        raise ValueError(f"no files ending in {' / '.join(suffixes)} under {', '.join(str(s) for s in sources)}")
    return out


def read_heads(files: Sequence[Path], max_chars: int) -> Iterator[str]:
    """The first `max_chars` characters of each file (undecodable bytes replaced)."""
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            yield fh.read(max_chars)
