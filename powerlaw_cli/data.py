"""Token sources for the proxy runs: one interface, four kinds of data.

``load_source(cfg, vocab_size, seq_len)`` returns a ``TokenSource``:

* ``train_batch(seed, step, batch_size)`` -> ``(inputs, targets)``, CPU LongTensors (B, T), targets shifted
  by one. A pure function of (seed, step) and the source: each call seeds a fresh ``torch.Generator`` from a
  hash of (seed, step); the global RNG is never touched. It returns the whole batch of a step (micro-batching
  slices it).
* ``val_batches(batch_size)`` -> the fixed held-out set, in order. It never depends on the run seed, so every
  run of a sweep is evaluated on the same tokens; the last batch may be smaller (weight it by
  ``targets.numel()``).

Sources: ``synthetic`` (a seeded Markov language, sampled on the fly: infinite data), ``tokens``
(nanoGPT-style ``.bin`` or ``.npy`` files, memory-mapped), ``text`` (bytes of a file or folder) and ``stdlib``
(bytes of the running Python's standard library sources). The file sources draw random windows (nanoGPT
style) from the train region; the validation set is ``val_tokens`` held-out tokens cut into consecutive
windows of ``seq_len + 1`` that overlap by one token, so it has ``(val_tokens - 1) // seq_len`` sequences.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .data_files import (  # noqa: F401 - MAX_SYNTHETIC_VOCAB and stdlib_files: part of this module's interface
    DOC_SEPARATOR,
    MAX_SYNTHETIC_VOCAB,
    DataError,
    _fail,
    byte_files,
    check_settings,
    need_bytes,
    stdlib_files,
    token_files,
)

Batch = tuple[torch.Tensor, torch.Tensor]

SHARPNESS_SPREAD = 2.0  # synthetic row exponents spread over [s / SPREAD, s * SPREAD] ...
SHARPNESS_LEVELS = 32  # ... in this many distinct values


def stream_generator(*key: object) -> torch.Generator:
    """A fresh CPU generator seeded from a hash of ``key``, e.g. ("train", seed, step).

    Hashing (rather than seed + step) keeps nearby keys' streams unrelated, and tags such as "train" and
    "val" keep the streams of different uses apart.
    """
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _val_windows(tokens: np.ndarray, seq_len: int) -> torch.Tensor:
    """Consecutive windows of seq_len + 1 tokens, overlapping by one: each token but the first is a target."""
    flat = torch.from_numpy(np.array(tokens, dtype=np.int64))
    return flat.unfold(0, seq_len + 1, seq_len)  # (N, T+1), N = (len - 1) // T


class TokenSource(ABC):
    """Training batches as a pure function of (seed, step), and one fixed validation set."""

    def __init__(self, vocab_size: int, seq_len: int, val_windows: torch.Tensor) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        # Split once so each evaluation only slices (contiguous row blocks, no copies).
        self._val_inputs = val_windows[:, :-1].contiguous()
        self._val_targets = val_windows[:, 1:].contiguous()

    @abstractmethod
    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        """The whole batch of step ``step`` of a run with seed ``seed``: (inputs, targets), (B, T) each."""

    @property
    def val_sequences(self) -> int:
        """Sequences in the validation set; it predicts ``val_sequences * seq_len`` tokens."""
        return self._val_inputs.shape[0]

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The fixed validation set in order, ``batch_size`` sequences at a time (the last may be smaller).

        The tensors are shared between calls: do not modify them in place.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        for start in range(0, self.val_sequences, batch_size):
            yield self._val_inputs[start : start + batch_size], self._val_targets[start : start + batch_size]


# ---------------------------------------------------------------- synthetic: a seeded Markov language


class MarkovLanguage:
    """A bigram language over ``vocab_size`` tokens, from a seed.

    The token after token i has rank k = 1..V with probability proportional to k^-s_i, ranks mapped to tokens
    by a random permutation of the vocabulary per row. Rows differ in sharpness (the "river valley" toy of
    Wen et al. 2024: different first tokens, different next-token uncertainty): the exponents s_i take
    ``SHARPNESS_LEVELS`` values spread log-uniformly over [s / SHARPNESS_SPREAD, s * SHARPNESS_SPREAD],
    dealt evenly over the tokens at random. With s = 1.1 and V = 256 the row entropies span ~1.3..5.3 nats.
    A few levels rather than one exponent per row keep the sampler's tables in cache at any vocab size.
    Sequences start from the stationary distribution, so the loss floor is the same at every position.
    """

    def __init__(self, seed: int, vocab_size: int, zipf_exponent: float) -> None:
        v = self.vocab_size = vocab_size
        levels = min(v, SHARPNESS_LEVELS)
        g = stream_generator("synthetic-language", seed)
        exponents = zipf_exponent * SHARPNESS_SPREAD ** torch.linspace(-1.0, 1.0, levels, dtype=torch.float64)
        ranks = torch.arange(1, v + 1, dtype=torch.float64)
        rank_probs = ranks[None, :] ** -exponents[:, None]  # (L, V): level l, rank k
        rank_probs /= rank_probs.sum(dim=1, keepdim=True)
        self.level = (torch.randperm(v, generator=g) % levels).numpy()  # (V,): each token's row level
        self.rank_probs = rank_probs.numpy()
        # (V, V): row i, rank k -> token; int16 since V <= MAX_SYNTHETIC_VOCAB < 2^15. (A randperm per row
        # is 10x faster than an argsort of V x V random numbers.)
        rows = [torch.randperm(v, generator=g, dtype=torch.int16) for _ in range(v)]
        self.perm = torch.stack(rows).numpy()
        level_entropy = -torch.special.xlogy(rank_probs, rank_probs).sum(dim=1)
        self.row_entropy = level_entropy.numpy()[self.level]  # (V,) nats
        self.stationary = _stationary(self.transition_matrix())  # (V,)
        self.entropy = float(self.stationary @ self.row_entropy)
        self._init_sampler()

    def _init_sampler(self) -> None:
        v = self.vocab_size
        cdf = self.rank_probs.cumsum(axis=1)
        cdf[:, -1] = 1.0  # exact, so the search below never runs past a row
        # Level l's cdf lives in [2l, 2l + 1] of one sorted array: one 1-D searchsorted serves every
        # sequence at once, and the gap of 1 between levels keeps the rounding of 2l + u inside level l.
        self._flat_cdf = (cdf + 2.0 * np.arange(cdf.shape[0])[:, None]).reshape(-1)
        self._offset = 2.0 * self.level  # (V,)
        self._base = (np.arange(v) - self.level) * v  # flat index of (level l, rank k) + base[i] = (i, k)
        self._flat_perm = self.perm.reshape(-1)
        self._start_cdf = self.stationary.cumsum()
        self._start_cdf[-1] = 1.0

    def transition_matrix(self) -> np.ndarray:
        """(V, V) float64 with [i, j] = P(next = j | current = i)."""
        out = np.zeros((self.vocab_size, self.vocab_size))
        np.put_along_axis(out, self.perm.astype(np.int64), self.rank_probs[self.level], axis=1)
        return out

    def sample(self, generator: torch.Generator, n_sequences: int, length: int) -> torch.Tensor:
        """(n_sequences, length) LongTensor of independent sequences, by inverse CDF."""
        u = torch.rand(length, n_sequences, generator=generator, dtype=torch.float64).numpy()
        out = np.empty((length, n_sequences), dtype=np.int64)
        out[0] = np.searchsorted(self._start_cdf, u[0])  # _start_cdf[-1] == 1 > u: a valid token
        for t in range(1, length):  # numpy: ~3x less overhead than torch on these small arrays
            prev = out[t - 1]
            flat = np.searchsorted(self._flat_cdf, self._offset[prev] + u[t])  # level * V + rank
            out[t] = self._flat_perm[self._base[prev] + flat]
        return torch.from_numpy(out.T.copy())


def _stationary(transition: np.ndarray) -> np.ndarray:
    """pi with pi P = pi and sum(pi) = 1, by one linear solve.

    Power iteration would crawl for sharp languages (large zipf_exponent: a second eigenvalue near 1);
    the solve takes ~2 s once at V = 4096. All entries are positive: the chain is ergodic, pi unique.
    """
    v = transition.shape[0]
    system = torch.from_numpy(transition.T - np.eye(v))
    system[-1] = 1.0  # one balance equation is redundant: replace it by the normalisation
    rhs = torch.zeros(v, dtype=torch.float64)
    rhs[-1] = 1.0
    pi = torch.linalg.solve(system, rhs).clamp_(min=0.0).numpy()  # clamp: rounding can leave -1e-18
    return pi / pi.sum()


@functools.lru_cache(maxsize=4)
def markov_language(seed: int, vocab_size: int, zipf_exponent: float) -> MarkovLanguage:
    """The synthetic language of ``seed``, built once per process (cached)."""
    return MarkovLanguage(seed, vocab_size, zipf_exponent)


class SyntheticSource(TokenSource):
    """Sequences of a seeded Markov language, sampled on the fly: infinite data, no epochs."""

    def __init__(self, cfg: DataConfig, vocab_size: int, seq_len: int) -> None:
        self.language = markov_language(cfg.synthetic_seed, vocab_size, cfg.zipf_exponent)
        n_val = (cfg.val_tokens - 1) // seq_len  # as many sequences as a file source of val_tokens tokens
        # The val stream is keyed by the language, never by a run seed, and its tag differs from "train".
        val = self.language.sample(stream_generator("synthetic-val", cfg.synthetic_seed), n_val, seq_len + 1)
        super().__init__(vocab_size, seq_len, val)

    @property
    def entropy(self) -> float:
        """The language's true conditional entropy, nats/token: the loss floor of a perfect model."""
        return self.language.entropy

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        seqs = self.language.sample(stream_generator("train", seed, step), batch_size, self.seq_len + 1)
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()


# ---------------------------------------------------------------- file sources: random windows of an array


class WindowSource(TokenSource):
    """Random windows (nanoGPT style) of a flat train array; validation from a held-out array."""

    def __init__(
        self,
        open_train: Callable[[], np.ndarray],
        n_train: int,
        val_tokens: np.ndarray,
        vocab_size: int,
        seq_len: int,
        check_file: Path | None = None,
    ) -> None:
        """``open_train()`` returns the train array (re-opened per batch); ``check_file``: the train file
        whose ids each batch checks against ``vocab_size`` (None for bytes, always < 256 <= vocab_size)."""
        self._open_train = open_train
        self.n_train = n_train
        self._check_file = check_file
        super().__init__(vocab_size, seq_len, _val_windows(val_tokens, seq_len))

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        g = stream_generator("train", seed, step)
        starts = torch.randint(self.n_train - self.seq_len, (batch_size,), generator=g).numpy()
        index = starts[:, None] + np.arange(self.seq_len + 1)  # (B, T+1)
        windows = np.array(self._open_train()[index], dtype=np.int64)
        if self._check_file is not None:
            _check_ids(windows, self.vocab_size, self._check_file)
        seqs = torch.from_numpy(windows)
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()


def _check_ids(tokens: np.ndarray, vocab_size: int, path: Path) -> None:
    if tokens.size == 0:
        return
    top, bottom = int(tokens.max()), int(tokens.min())
    if top >= vocab_size:
        raise _fail(path, f"holds token id {top} >= model.vocab_size={vocab_size}; raise model.vocab_size")
    if bottom < 0:
        raise _fail(path, f"holds a negative token id ({bottom})")


def load_tokens(cfg: DataConfig, vocab_size: int, seq_len: int) -> WindowSource:
    """``cfg.path``: a token file (its last ``val_tokens`` held out), or a folder with train.bin, val.bin."""
    file, val = token_files(cfg, seq_len)
    if val is not None:
        val_tokens = val.open()[: cfg.val_tokens]
        _check_ids(val_tokens, vocab_size, val.path)
        return WindowSource(file.open, file.length, val_tokens, vocab_size, seq_len, file.path)
    n_train = file.length - cfg.val_tokens
    val_tokens = file.open()[n_train:]
    _check_ids(val_tokens, vocab_size, file.path)

    def open_train() -> np.ndarray:
        # Recreate the memmap each batch: a long-lived one keeps every page it touched mapped (nanoGPT).
        return file.open()[:n_train]

    return WindowSource(open_train, n_train, val_tokens, vocab_size, seq_len, file.path)


# ---------------------------------------------------------------- byte-level text and the standard library


def read_corpus(files: list[Path], skip_binary: bool) -> np.ndarray:
    """The files' bytes joined by DOC_SEPARATOR, as a read-only uint8 array; cached per process.

    The cache key holds each file's size and mtime, so a changed file is read again. ``skip_binary`` drops
    files containing a NUL byte (as git does to spot binaries), which also keeps the separator unique.
    """
    key = []
    for file in files:
        try:
            stat = file.stat()
        except OSError as err:
            raise _fail(file, f"cannot read ({err.strerror})") from None
        key.append((str(file), stat.st_size, stat.st_mtime_ns))
    return _read_corpus(tuple(key), skip_binary)


@functools.lru_cache(maxsize=4)
def _read_corpus(key: tuple[tuple[str, int, int], ...], skip_binary: bool) -> np.ndarray:
    chunks = []
    for name, _, _ in key:
        try:
            data = Path(name).read_bytes()
        except OSError as err:
            raise _fail(name, f"cannot read ({err.strerror})") from None
        if data and not (skip_binary and DOC_SEPARATOR in data):
            chunks.append(data)
    return np.frombuffer(DOC_SEPARATOR.join(chunks), dtype=np.uint8)  # read-only: shared by every run


def load_bytes(cfg: DataConfig, vocab_size: int, seq_len: int) -> WindowSource:
    """Bytes of ``cfg.path`` (text: a file, or every non-hidden, non-binary file of a folder, recursive,
    sorted), or of the running Python's standard library sources (stdlib: see ``stdlib_files``)."""
    where, files, setting = byte_files(cfg)
    folder = cfg.source == "stdlib" or where.is_dir()
    corpus = read_corpus(files, skip_binary=folder)
    if corpus.size == 0 and setting == "data.path":
        raise _fail(where, "folder holds no text files (hidden, empty and binary files are skipped)")
    need_bytes(corpus.size, cfg, seq_len, where, setting)
    n_train = corpus.size - cfg.val_tokens
    return WindowSource(lambda: corpus[:n_train], n_train, corpus[n_train:], vocab_size, seq_len)


# ---------------------------------------------------------------- entry point


def load_source(cfg: DataConfig, vocab_size: int, seq_len: int) -> TokenSource:
    """The token source of ``cfg`` for a model with ``vocab_size`` tokens and sequences of ``seq_len``."""
    check_settings(cfg, vocab_size, seq_len)
    loaders = {"synthetic": SyntheticSource, "tokens": load_tokens, "text": load_bytes, "stdlib": load_bytes}
    return loaders[cfg.source](cfg, vocab_size, seq_len)
