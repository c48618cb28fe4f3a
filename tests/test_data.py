"""Token sources: real files in tmp_path, read back exactly; determinism; held-out validation; errors.

Token files hold a random permutation of distinct ids, so the first id of a window tells where in the file
it was drawn: every window is compared with the numpy array at that position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from powerlaw_cli import data
from powerlaw_cli.config import DataConfig
from powerlaw_cli.data import DataError, load_source

T = 16  # seq_len of every test source


def distinct_ids(n: int, offset: int = 0, seed: int = 0) -> np.ndarray:
    """offset .. offset + n - 1 in random order (int64)."""
    return np.random.default_rng(seed).permutation(n) + offset


def tokens_cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(source="tokens", path=str(path), **kw)


def positions(array: np.ndarray, first_ids: np.ndarray) -> np.ndarray:
    """Where each id sits in ``array`` (whose ids are distinct)."""
    order = np.argsort(array)
    return order[np.searchsorted(array, first_ids, sorter=order)]


def assert_windows(array: np.ndarray, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Each row is array[p : p + T] (targets: shifted by one) at its position p; returns the positions."""
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.shape == targets.shape and inputs.shape[1] == T
    starts = positions(array, inputs[:, 0].numpy())
    for p, x, y in zip(starts, inputs.numpy(), targets.numpy(), strict=True):
        np.testing.assert_array_equal(x, array[p : p + T])
        np.testing.assert_array_equal(y, array[p + 1 : p + T + 1])
    return starts


def assert_val_is(source: data.TokenSource, held_out: np.ndarray) -> None:
    """The validation set is ``held_out`` cut into consecutive windows overlapping by one token."""
    inputs = torch.cat([x for x, _ in source.val_batches(7)]).numpy()
    targets = torch.cat([y for _, y in source.val_batches(7)]).numpy()
    assert len(inputs) == source.val_sequences == (len(held_out) - 1) // T
    for i in range(len(inputs)):
        np.testing.assert_array_equal(inputs[i], held_out[i * T : i * T + T])
        np.testing.assert_array_equal(targets[i], held_out[i * T + 1 : i * T + T + 1])


# ---------------------------------------------------------------- token files read back exactly

N, VAL = 5000, 600


@pytest.mark.parametrize(
    ("name", "dtype", "offset"),
    [
        ("tok.bin", "uint16", 0),
        ("tok.bin", "uint32", 70_000),
        ("tok ens.npy", "uint32", 70_000),
        ("t.npy", "int32", 5),
    ],
)
def test_token_file_read_back_exactly(tmp_path: Path, name: str, dtype: str, offset: int) -> None:
    array = distinct_ids(N, offset).astype(dtype)
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        array.tofile(path)
    bin_dtype = dtype if dtype in ("uint16", "uint32") else "uint16"
    source = load_source(tokens_cfg(path, dtype=bin_dtype, val_tokens=VAL), offset + N, T)

    n_train = N - VAL
    starts = np.concatenate([assert_windows(array, *source.train_batch(3, step, 64)) for step in range(5)])
    assert starts.max() <= n_train - T - 1  # targets never reach the held-out tail
    assert len(set(starts)) > 250  # random windows, not one position repeated
    assert_val_is(source, array[n_train:])
    assert source.n_train == n_train


def test_nanogpt_folder_layout(tmp_path: Path) -> None:
    train, val = distinct_ids(4000).astype(np.uint16), distinct_ids(2000, offset=4000).astype(np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    source = load_source(tokens_cfg(tmp_path, val_tokens=1000), 8192, T)

    inputs, targets = source.train_batch(0, 0, 128)
    assert_windows(train, inputs, targets)  # every window from train.bin alone
    assert_val_is(source, val[:1000])  # the first val_tokens of val.bin
    assert source.n_train == 4000


def test_held_out_validation_is_disjoint_and_seed_free(tmp_path: Path) -> None:
    array = distinct_ids(N).astype(np.uint16)
    array.tofile(tmp_path / "t.bin")
    cfg = tokens_cfg(tmp_path / "t.bin", val_tokens=VAL)
    source = load_source(cfg, N, T)
    before = [x.clone() for x, _ in source.val_batches(16)]

    seen = torch.cat(
        [torch.cat(source.train_batch(seed, step, 64)) for seed in range(4) for step in range(50)]
    )
    assert not np.isin(seen.numpy(), array[N - VAL :]).any()  # no held-out token ever in training
    after = [x for x, _ in load_source(cfg, N, T).val_batches(16)]  # a fresh source, after many batches
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


# ---------------------------------------------------------------- determinism, for every kind of source


@pytest.fixture(params=["synthetic", "tokens", "text"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> data.TokenSource:
    if request.param == "synthetic":
        return load_source(DataConfig(val_tokens=4 * T + 1), 64, T)
    if request.param == "tokens":
        distinct_ids(N).astype(np.uint16).tofile(tmp_path / "t.bin")
        return load_source(tokens_cfg(tmp_path / "t.bin", val_tokens=VAL), N, T)
    (tmp_path / "book.txt").write_bytes(
        np.random.default_rng(0).integers(0, 256, 9000, dtype=np.uint8).tobytes()
    )
    return load_source(DataConfig(source="text", path=str(tmp_path / "book.txt"), val_tokens=VAL), 256, T)


def test_batch_is_a_pure_function_of_seed_and_step(source: data.TokenSource) -> None:
    first = source.train_batch(7, 11, 32)
    torch.manual_seed(123)  # global RNG state must not matter ...
    torch.rand(100)
    np.random.seed(5)
    source.train_batch(7, 12, 32)  # ... nor other batches drawn meanwhile
    again = source.train_batch(7, 11, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], source.train_batch(7, 12, 32)[0])  # another step
    assert not torch.equal(first[0], source.train_batch(8, 11, 32)[0])  # another seed
    inputs, targets = first
    assert inputs.shape == targets.shape == (32, T) and inputs.dtype == torch.int64
    assert inputs.is_contiguous() and targets.is_contiguous()
    torch.testing.assert_close(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one


def test_val_batches_cover_the_set_in_order(source: data.TokenSource) -> None:
    sizes = [len(x) for x, _ in source.val_batches(3)]
    assert sum(sizes) == source.val_sequences and max(sizes) == 3
    whole = torch.cat([x for x, _ in source.val_batches(3)])
    torch.testing.assert_close(whole, next(iter(source.val_batches(10_000)))[0])


# ---------------------------------------------------------------- text and stdlib


def test_text_folder_is_read_recursively_sorted_and_joined(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)

    def text(n: int) -> bytes:
        return bytes(rng.integers(ord("a"), ord("z") + 1, n, dtype=np.uint8))

    root = tmp_path / "my corpus"
    (root / "a").mkdir(parents=True)
    (root / ".git").mkdir()
    files = {"a/y.md": text(900), "a/z.txt": text(700), "b.txt": text(800)}
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / ".hidden.txt").write_bytes(b"HIDDEN" * 50)  # skipped: hidden
    (root / ".git" / "config").write_bytes(b"GITDIR" * 50)  # skipped: hidden folder
    (root / "c.bin").write_bytes(b"\x00\x01BINARY" * 50)  # skipped: binary (holds NUL)
    (root / "empty.txt").write_bytes(b"")  # skipped: empty
    expected = np.frombuffer(b"\x00".join(files.values()), dtype=np.uint8)  # sorted: a/y.md, a/z.txt, b.txt

    val_tokens = 800 + 1 + 60  # the tail of a/z.txt, the separator, all of b.txt
    source = load_source(DataConfig(source="text", path=str(root), val_tokens=val_tokens), 256, T)
    assert source.n_train == expected.size - val_tokens
    assert_val_is(source, expected[-val_tokens:])
    train_part = expected[:-val_tokens].tobytes()
    inputs, targets = source.train_batch(0, 0, 64)
    for x, y in zip(inputs.numpy(), targets.numpy(), strict=True):
        assert np.append(x, y[-1]).astype(np.uint8).tobytes() in train_part


def test_stdlib_is_real_python_source_and_read_once() -> None:
    cfg = DataConfig(source="stdlib", val_tokens=4096)
    source = load_source(cfg, 256, 64)
    inputs, _ = source.train_batch(0, 0, 64)
    text = b"".join(row.astype(np.uint8).tobytes() for row in inputs.numpy()).decode("utf-8", "replace")
    assert "def " in text or "import " in text or "self." in text
    assert source.n_train > 1_000_000

    root, files = data.stdlib_files()
    relative = [f.relative_to(root) for f in files]
    assert Path("os.py") in relative and Path("json/decoder.py") in relative
    assert not any(set(r.parts) & {"site-packages", "test", "tests", "idle_test"} for r in relative)
    hits = data._read_corpus.cache_info().hits
    load_source(cfg, 256, 64)  # a second run in the process reuses the corpus
    assert data._read_corpus.cache_info().hits == hits + 1


# ---------------------------------------------------------------- synthetic language


@pytest.fixture(scope="module")
def language_source() -> data.SyntheticSource:
    source = load_source(DataConfig(synthetic_seed=3, zipf_exponent=1.1, val_tokens=4 * 64 + 1), 16, 64)
    assert isinstance(source, data.SyntheticSource)
    return source


def stationary_by_eig(transition: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(transition.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return pi / pi.sum()


def test_synthetic_entropy_is_the_direct_computation(language_source: data.SyntheticSource) -> None:
    transition = language_source.language.transition_matrix()
    np.testing.assert_allclose(transition.sum(axis=1), 1.0, rtol=1e-12)
    pi = stationary_by_eig(transition)
    row_entropy = -np.sum(transition * np.log(transition), axis=1)
    assert language_source.entropy == pytest.approx(float(pi @ row_entropy), rel=1e-9)
    assert row_entropy.max() - row_entropy.min() > 1.0  # rows of different sharpness (river valley toy)


def test_synthetic_bigram_frequencies_match_the_table(language_source: data.SyntheticSource) -> None:
    seqs = []
    for step in range(4):
        inputs, targets = language_source.train_batch(0, step, 512)
        seqs.append(torch.cat([inputs, targets[:, -1:]], dim=1).numpy())
    seq = np.concatenate(seqs)  # (2048, 65)
    v = 16
    counts = np.zeros((v, v))
    np.add.at(counts, (seq[:, :-1].ravel(), seq[:, 1:].ravel()), 1)
    transition = language_source.language.transition_matrix()
    expected = counts.sum(axis=1, keepdims=True) * transition
    sigma = np.sqrt(expected * (1 - transition))
    # 6 sigma (+5 counts for rare cells, where the normal approximation is poor): over 60 other seeds the
    # worst cell reached 0.91 of a 5-sigma bound; mutated samplers exceed it by far.
    assert np.all(np.abs(counts - expected) <= 6 * sigma + 5)

    pi = language_source.language.stationary  # sequences start (and so stay) at the stationary distribution
    first = np.bincount(seq[:, 0], minlength=v)
    assert np.all(np.abs(first - len(seq) * pi) <= 5 * np.sqrt(len(seq) * pi * (1 - pi)) + 2)

    nll = -np.log(transition[seq[:, :-1], seq[:, 1:]]).mean()  # Monte Carlo estimate of the loss floor
    assert nll == pytest.approx(language_source.entropy, abs=0.03)


def test_synthetic_validation_is_fixed_and_not_a_training_stream(
    language_source: data.SyntheticSource,
) -> None:
    rebuilt = load_source(DataConfig(synthetic_seed=3, zipf_exponent=1.1, val_tokens=4 * 64 + 1), 16, 64)
    val = torch.cat([x for x, _ in language_source.val_batches(2)])
    assert val.shape == (4, 64)
    torch.testing.assert_close(val, torch.cat([x for x, _ in rebuilt.val_batches(4)]))
    for seed in range(3):
        assert not torch.equal(val, language_source.train_batch(seed, 0, 4)[0])
    other = load_source(DataConfig(synthetic_seed=4, val_tokens=4 * 64 + 1), 16, 64)
    assert not torch.equal(val, next(iter(other.val_batches(4)))[0])  # another language, another set


# ---------------------------------------------------------------- errors name the file and the setting


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=True)
    return path


def ids(n: int, dtype: str = "uint16", value: int | None = None) -> bytes:
    array = np.full(n, value, dtype=dtype) if value is not None else np.arange(n, dtype=dtype) % 200
    return array.tobytes()


def folder(path: Path, train: bytes, val: bytes | None) -> Path:
    write(path / "train.bin", train)
    if val is not None:
        write(path / "val.bin", val)
    return path


# Each case: (source, make(dir) -> (data.path, the path the message must name)), with vocab 256, seq_len T.
MALFORMED = {
    "missing file": ("tokens", lambda d: (d / "no such.bin",) * 2),
    "missing text": ("text", lambda d: (d / "gone",) * 2),
    "empty folder": ("text", lambda d: ((d / "empty dir").mkdir() or d / "empty dir",) * 2),
    "only binary files": ("text", lambda d: (write(d / "t" / "x.dat", b"a\x00b").parent,) * 2),
    "text too short": ("text", lambda d: (write(d / "short.txt", b"x" * 100),) * 2),
    "wrong suffix": ("tokens", lambda d: (write(d / "tok.txt", ids(1000)),) * 2),
    "float npy": ("tokens", lambda d: (npy(d / "f.npy", np.zeros(1000, np.float32)),) * 2),
    "pickled npy": ("tokens", lambda d: (npy(d / "o.npy", np.array([1, "a"] * 500, dtype=object)),) * 2),
    "not an npy": ("tokens", lambda d: (write(d / "g.npy", b"garbage" * 100),) * 2),
    "truncated npy": (
        "tokens",
        lambda d: (write(d / "t.npy", (npy(d / "x.npy", np.arange(999)).read_bytes()[:-8])),) * 2,
    ),
    "odd-sized bin": ("tokens", lambda d: (write(d / "odd.bin", ids(1000) + b"\x01"),) * 2),
    "bin too short": ("tokens", lambda d: (write(d / "s.bin", ids(2 * T)),) * 2),
    "no val.bin": ("tokens", lambda d: (folder(d / "run", ids(1000), None),) * 2),
    "val.bin too short": ("tokens", lambda d: (folder(d / "run", ids(1000), ids(10)), d / "run" / "val.bin")),
    "val id >= vocab": (
        "tokens",
        lambda d: (folder(d / "run", ids(1000), ids(300, value=256)), d / "run" / "val.bin"),
    ),
    "negative id": ("tokens", lambda d: (npy(d / "n.npy", np.full(1000, -1, np.int32)),) * 2),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_data_raises_data_error_naming_the_path(tmp_path: Path, case: str) -> None:
    kind, make = MALFORMED[case]
    path, named = make(tmp_path)
    with pytest.raises(DataError) as caught:
        load_source(DataConfig(source=kind, path=str(path), val_tokens=256), 256, T)
    message = str(caught.value)
    assert message.startswith("data.path: ") and "\n" not in message
    assert str(named.resolve()) in message, message


def test_token_id_beyond_vocab_in_a_training_batch(tmp_path: Path) -> None:
    path = write(tmp_path / "t.bin", ids(1000, value=300) + ids(300, value=5))  # train ids bad, val ids fine
    source = load_source(tokens_cfg(path, val_tokens=300), 256, T)
    with pytest.raises(DataError, match=r"token id 300 >= model.vocab_size=256") as caught:
        source.train_batch(0, 0, 4)
    assert str(path.resolve()) in str(caught.value)


@pytest.mark.parametrize(
    ("cfg", "vocab", "setting"),
    [
        (DataConfig(source="stdlib"), 128, "model.vocab_size=128"),
        (DataConfig(source="text", path="x.txt"), 200, "model.vocab_size=200"),
        (DataConfig(val_tokens=T), 64, "data.val_tokens=16"),
        (DataConfig(), data.MAX_SYNTHETIC_VOCAB + 1, "model.vocab_size"),
    ],
)
def test_sizes_that_cannot_work_name_the_setting(cfg: DataConfig, vocab: int, setting: str) -> None:
    with pytest.raises(DataError, match=setting):
        load_source(cfg, vocab, T)
    assert issubclass(DataError, ValueError)
