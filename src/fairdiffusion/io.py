"""Atomic, standard-format outputs: every writer goes through a temporary name, then a rename."""

from __future__ import annotations

import contextlib
import hashlib
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

from .errors import FairDiffError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _remove_stale(path: Path) -> None:
    """Delete what a killed writer of `path` left behind (SIGKILL skips the cleanup below)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; published outputs get the usual permissions.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FairDiffError(f"{path}: could not write ({err.strerror or err})") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FairDiffError(f"{path}: could not write ({err.strerror or err})") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


_VERSIONED = ["torch", "diffusers", "transformers", "accelerate", "botorch", "torch-fidelity",
              "snakemake", "pandas", "numpy", "scipy"]


def run_info(settings: dict) -> dict:
    """The resolved settings and the package versions that produced an output (run_info.json)."""
    versions = {}
    for name in ["fairdiffusion", *_VERSIONED]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "settings": settings,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def write_run_info_beside(output: str | os.PathLike, args) -> Path:
    """Provenance of a file output (a folder output holds its own run_info.json): the stage's
    resolved arguments and the package versions, as `<name>.run_info.json` beside it."""
    output = Path(output)
    path = output.with_name(output.name.split(".")[0] + ".run_info.json")
    write_json(path, run_info(stage_settings(args)))
    return path


def stage_settings(args) -> dict:
    """A CLI stage's parsed arguments, as run_info settings."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("stage", "verbose")}
