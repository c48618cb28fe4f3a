"""The data settings' files, checked without torch: what ``data.load_source`` opens in a worker, and what
``plan`` and ``launch`` check before anything is queued (``check_sweep_data``).

A data source is usable when its settings fit the model (``check_settings``) and its files exist, are regular
and readable, are not empty, have a size that fits their dtype and hold at least one training sequence plus
the validation tokens. Reading the tokens themselves (ids beyond the vocabulary, a text folder of binary
files only) is left to the workers: it costs a pass over the data.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig, RunConfig
from .errors import PlsweepError

BYTE_VOCAB = 256
MAX_SYNTHETIC_VOCAB = 4096  # dense V x V tables: ~0.5 GB and ~5 s to build at this size, once per process
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
# Joins the files of a folder: NUL never occurs in accepted text, so the model can learn it as "end of file".
DOC_SEPARATOR = b"\x00"


class DataError(PlsweepError):
    """The data setting cannot be used: the message is one line naming the file and the setting."""


def _fail(path: Path | str, problem: str) -> DataError:
    return DataError(f"data.path: '{path}': {problem}")


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_settings(cfg: DataConfig, vocab_size: int, seq_len: int) -> None:
    """DataError when the data settings cannot work with this model, whatever the files hold."""
    if cfg.val_tokens < seq_len + 1:
        raise DataError(f"data.val_tokens={cfg.val_tokens}: must be >= model.seq_len + 1 = {seq_len + 1}")
    if cfg.source == "synthetic" and not 2 <= vocab_size <= MAX_SYNTHETIC_VOCAB:
        raise DataError(
            f"model.vocab_size={vocab_size}: synthetic data needs 2..{MAX_SYNTHETIC_VOCAB} "
            "(its transition table is dense)"
        )
    if cfg.source in ("text", "stdlib") and vocab_size < BYTE_VOCAB:
        raise DataError(
            f"model.vocab_size={vocab_size}: byte-level data (data.source={cfg.source}) needs >= 256"
        )


def check_sweep_data(runs: Iterable[RunConfig]) -> None:
    """``check_data`` for every distinct data setting (and model vocabulary and sequence length) of ``runs``,
    once each: what ``plan`` and ``launch`` run before anything is queued."""
    for cfg, vocab_size, seq_len in dict.fromkeys(
        (r.data, r.model.vocab_size, r.model.seq_len) for r in runs
    ):
        check_data(cfg, vocab_size, seq_len)


def check_data(cfg: DataConfig, vocab_size: int, seq_len: int) -> None:
    """DataError (one line naming the setting and the path) when a worker could not load this data source."""
    check_settings(cfg, vocab_size, seq_len)
    if cfg.source == "tokens":
        token_files(cfg, seq_len)
    elif cfg.source in ("text", "stdlib"):
        where, files, setting = byte_files(cfg)
        for file in files:
            if not os.access(file, os.R_OK):
                raise _fail(file, "cannot read (permission denied)")
        sizes = [file.stat().st_size for file in files]
        # files joined by one separator byte each: an upper bound (workers skip files holding a NUL byte)
        need_bytes(sum(sizes) + max(len([s for s in sizes if s]) - 1, 0), cfg, seq_len, where, setting)


# ---------------------------------------------------------------- token files


@dataclass(frozen=True)
class TokenFile:
    """A validated flat token file: its elements start at byte ``offset``."""

    path: Path
    dtype: np.dtype
    offset: int
    length: int

    def open(self) -> np.ndarray:
        """A fresh read-only memmap of the tokens."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.length,))


def open_token_file(path: Path, bin_dtype: str) -> TokenFile:
    """Check a ``.bin`` (raw ``bin_dtype`` elements) or ``.npy`` token file; DataError if unusable."""
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise _fail(path, f"cannot read ({err.strerror})") from None
    if path.stat().st_size == 0:
        raise _fail(path, "empty file")
    if path.suffix == ".bin":
        dtype = np.dtype(bin_dtype)
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise _fail(path, f"{size} bytes is not a multiple of {dtype.itemsize} (data.dtype={bin_dtype})")
        return TokenFile(path, dtype, 0, size // dtype.itemsize)
    if path.suffix == ".npy":
        return _open_npy(path)
    raise _fail(path, "expected a .bin or .npy token file, or a folder with train.bin and val.bin")


def _open_npy(path: Path) -> TokenFile:
    with open(path, "rb") as handle:
        # Check the magic ourselves: otherwise numpy tries (and refuses) to unpickle it, a confusing message.
        if handle.read(6) != b"\x93NUMPY":
            raise _fail(path, "not a .npy file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _fail(path, f"unreadable .npy file ({one_line(err)})") from None
    if array.dtype.kind not in "iu":
        raise _fail(path, f"dtype {array.dtype} is not an integer type (expected uint16, uint32, ...)")
    if array.ndim > 1 and not array.flags.c_contiguous:
        raise _fail(path, "Fortran-ordered array; save it C-ordered (tokens are read as one flat stream)")
    return TokenFile(path, array.dtype, int(array.offset), int(array.size))


def _need(path: Path, have: int, need: int, what: str) -> None:
    if have < need:
        raise _fail(path, f"{have} tokens, need at least {need} ({what})")


def token_files(cfg: DataConfig, seq_len: int) -> tuple[TokenFile, TokenFile | None]:
    """The train and val files of ``cfg.path``, checked: a folder with train.bin and val.bin, or one token
    file (val None: its last ``val_tokens`` are held out)."""
    path = Path(cfg.path).expanduser().resolve()
    if path.is_dir():
        files = {name: path / f"{name}.bin" for name in ("train", "val")}
        for file in files.values():
            if not file.is_file():
                raise _fail(path, f"folder lacks {file.name} (expected nanoGPT's train.bin and val.bin)")
        train, val = (open_token_file(f, cfg.dtype) for f in files.values())
        _need(train.path, train.length, seq_len + 1, "model.seq_len + 1")
        _need(val.path, val.length, cfg.val_tokens, "data.val_tokens")
        return train, val
    if not path.exists():
        raise _fail(path, "no such file or folder")
    file = open_token_file(path, cfg.dtype)
    _need(path, file.length, cfg.val_tokens + seq_len + 1, "data.val_tokens + model.seq_len + 1")
    return file, None


# ---------------------------------------------------------------- byte-level text and the standard library


def _walk(root: Path, keep_dir: Callable[[str], bool], keep_file: Callable[[str], bool]) -> list[Path]:
    """Files under ``root`` named as ``keep_file`` wants, in folders ``keep_dir`` keeps; sorted by path."""
    found = []
    for folder, dirs, names in os.walk(root):  # os.walk does not follow symlinked folders: no cycles
        dirs[:] = [d for d in dirs if keep_dir(d)]
        found += [Path(folder, n) for n in names if keep_file(n) and Path(folder, n).is_file()]
    return sorted(found)  # Path order compares part by part: "a/z.txt" < "b.txt"


def text_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted by path, skipping hidden (dot) files and folders."""
    return _walk(root, lambda d: not d.startswith("."), lambda n: not n.startswith("."))


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library folder and its ``.py`` sources, sorted by path.

    Skipped: site-packages (installed packages, not the standard library); test suites (``test``, ``tests``,
    ``idle_test``: 19 MB of .py beside the 12 MB kept on CPython 3.11, full of deliberately odd code);
    ``config-*`` and ``_sysconfigdata*`` (this machine's build settings), so the corpus depends only on the
    Python version.
    """
    root = Path(sysconfig.get_paths()["stdlib"])

    def keep_dir(name: str) -> bool:
        return name not in STDLIB_SKIP_DIRS and not name.startswith(("config-", "."))

    def keep_file(name: str) -> bool:
        return name.endswith(".py") and not name.startswith("_sysconfigdata")

    return root, _walk(root, keep_dir, keep_file)


def byte_files(cfg: DataConfig) -> tuple[Path, list[Path], str]:
    """The files of a byte-level source (text or stdlib), where they are and the setting that names them;
    DataError when there are none."""
    if cfg.source == "stdlib":
        root, files = stdlib_files()
        if not files:
            raise DataError(f"data.source=stdlib: no .py sources under '{root}' (this Python ships none)")
        return root, files, "data.source=stdlib"
    path = Path(cfg.path).expanduser().resolve()
    if path.is_dir():
        files = text_files(path)
        if not any(file.stat().st_size for file in files):
            raise _fail(path, "folder holds no text files (hidden, empty and binary files are skipped)")
        return path, files, "data.path"
    if path.is_file():
        return path, [path], "data.path"
    raise _fail(path, "no such file or folder")


def need_bytes(size: int, cfg: DataConfig, seq_len: int, where: Path, setting: str) -> None:
    """DataError when ``size`` bytes of text hold less than one training sequence plus the validation set."""
    need = cfg.val_tokens + seq_len + 1
    if size < need:
        raise DataError(
            f"{setting}: '{where}': {size} bytes of text, need at least {need} "
            "(data.val_tokens + model.seq_len + 1)"
        )
