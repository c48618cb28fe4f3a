"""The typed settings of one proxy run, in six sections.

Each field is documented where it is defined (its ``doc``) and says whether it changes the run's
result (``identity``): only those enter the ``run_id``. Sweep files (``spec.py``) and ``plsweep train``
reuse these sections unchanged, and the settings table of docs/sweep-files.md is generated from them.

Run ids survive new settings. Adding a field to the identity would change the hash of every run, so
every sweep directory launched before the upgrade would be refused or re-run. A setting added later
therefore names its ``legacy`` value, the one that reproduces the behaviour from before it existed
(``setting("coupled", ..., legacy="coupled")``), and ``RunConfig.identity()`` leaves the field out
whenever it holds that value: such runs keep the ids they had, and only runs that use the new
behaviour get new ids, whatever the field's default.

Units: token counts are tokens, batch sizes are sequences, ``lr`` is the base Adam LR (the LR at
``width == base_width``) before muP's per-group multipliers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .bounds import FINITE
from .errors import PlsweepError

ScheduleName = Literal["constant", "cosine", "cyclic_cosine", "inverse_sqrt", "wsd", "wsd_s", "power"]
DecayShape = Literal["linear", "cosine", "1-sqrt", "exponential"]
DataSource = Literal["synthetic", "tokens", "text", "stdlib"]
AveragingKind = Literal["none", "ema", "anytime", "tail"]
Parametrization = Literal["mup", "sp"]
WeightDecayRule = Literal["coupled", "independent"]
MAX_MLP_RATIO = 1024
"""Above this an MLP ratio is a typo, and its parameter and FLOP counts leave the float range."""
SECTION_NAMES = ("model", "data", "optimizer", "schedule", "training", "averaging")
TRAINER_IDENTITY = ("command", "entry_point")
"""The keys of a run's ``trainer`` that enter its id: what trains it (not where it runs from, nor its timeout)."""


class ConfigError(PlsweepError):
    """A setting is unknown, of the wrong type or out of range; the message is one line naming it."""


NO_LEGACY: Any = object()
"""Marks a setting that has been part of the run id from the start (no ``legacy`` value)."""


def setting(
    default: Any, doc: str, *, identity: bool = True, column: str | None = None, legacy: Any = NO_LEGACY
) -> Any:
    """A config field with its documentation and whether it changes the run's result.

    A run-id setting is a column of the runs table (``schema.py``), named ``column`` (default: the field's
    name). ``legacy``: for a result setting added after run ids existed, the value that reproduces the
    behaviour from before; ``RunConfig.identity()`` omits the field at that value (module docstring).
    """
    if legacy is not NO_LEGACY and not identity:
        raise TypeError("only a setting that is part of the run id can have a legacy value")
    metadata = {"doc": doc, "identity": identity, "column": column, "legacy": legacy}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def require(ok: bool, section: str, name: str, message: str) -> None:
    """Raise ``ConfigError("SECTION.NAME: MESSAGE")`` unless ``ok``: the one-line error of a bad setting."""
    if not ok:
        raise ConfigError(f"{section}.{name}: {message}")


class Section:
    """What every settings section offers besides its fields; sections are immutable, so a section shared by
    many runs of a sweep computes these once."""

    @functools.cached_property
    def values(self) -> dict[str, Any]:
        """{field: value} (plain data; do not modify)."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that change a run's result, without those at their ``legacy`` value."""
        return {f.name: getattr(self, f.name) for f in fields(self) if in_identity(f, getattr(self, f.name))}

    @functools.cached_property
    def identity_json(self) -> str:
        """The canonical JSON of ``identity()`` (see ``stable_hash``)."""
        return canonical_json(self.identity())


@dataclass(frozen=True)
class ModelConfig(Section):
    """The muP GPT proxy: a pre-norm decoder-only transformer."""

    width: int = setting(128, "d_model, the residual stream width")
    depth: int = setting(4, "number of transformer blocks")
    n_heads: int = setting(4, "attention heads; head_dim = width / n_heads")
    mlp_ratio: float = setting(4.0, "MLP hidden width as a multiple of width")
    seq_len: int = setting(128, "tokens per training sequence")
    vocab_size: int = setting(256, "vocabulary size (256 for byte-level text)")
    parametrization: Parametrization = setting("mup", "mup (Tensor Programs V, for Adam) or sp (standard)")
    base_width: int = setting(128, "muP base width: at width == base_width, mup and sp are the same model")
    base_head_dim: int = setting(
        0,
        "muP: head_dim of the base model (0: base_width / n_heads, i.e. n_heads fixed across widths; "
        "set it to head_dim when heads grow with width at a fixed head size)",
    )
    init_std: float = setting(
        0.02,
        "init std of embeddings, readout and (at base width) hidden matrices; 0: the base-width rule "
        "0.02 * sqrt(256 / base_width) (0.0566 at base width 32; docs/mup.md)",
    )
    embedding_multiplier: float = setting(
        1.0,
        "constant multiplier of the embedding output (tokens + learned positions), the same at every width "
        "(muP's input multiplier: tune it at the base width, it transfers)",
        legacy=1.0,
    )
    output_multiplier: float = setting(
        1.0,
        "constant multiplier of the logits, on top of mup's 1/m and the same at every width (muP's output "
        "multiplier: tune it at the base width, it transfers)",
        legacy=1.0,
    )
    positions: Literal["rotary", "learned"] = setting(
        "rotary", "rotary (RoPE, no parameters) or learned absolute positions"
    )

    def __post_init__(self) -> None:
        for name in ("width", "depth", "n_heads", "seq_len", "vocab_size", "base_width"):
            require(getattr(self, name) > 0, "model", name, "must be > 0")
        require(self.width % self.n_heads == 0, "model", "n_heads", f"must divide width={self.width}")
        require(
            (self.width // self.n_heads) % 2 == 0,
            "model",
            "n_heads",
            "head_dim = width / n_heads must be even (rotary)",
        )
        if self.base_head_dim == 0:
            require(
                self.base_width % self.n_heads == 0,
                "model",
                "base_width",
                f"must be divisible by n_heads={self.n_heads}",
            )
        require(self.base_head_dim >= 0, "model", "base_head_dim", "must be >= 0")
        require(0 < self.mlp_ratio <= MAX_MLP_RATIO, "model", "mlp_ratio", f"must be in (0, {MAX_MLP_RATIO}]")
        require(self.init_std >= 0, "model", "init_std", "must be >= 0 (0: the base-width rule)")
        for name in ("embedding_multiplier", "output_multiplier"):
            require(getattr(self, name) > 0, "model", name, "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.width // self.n_heads

    @property
    def base_head_dim_resolved(self) -> int:
        """The base model's head_dim, relative to which muP scales attention scores."""
        return self.base_head_dim or self.base_width // self.n_heads

    @property
    def init_std_resolved(self) -> float:
        """The init std in use: ``init_std``, or for 0 the base-width rule ``base_width_init_std``."""
        return self.init_std or base_width_init_std(self.base_width)

    @property
    def width_multiplier(self) -> float:
        """muP's m = width / base_width (1 for sp, whose scalings ignore it)."""
        return self.width / self.base_width

    @property
    def mlp_hidden(self) -> int:
        """Width of the MLP's hidden layer."""
        return round(self.mlp_ratio * self.width)

    @property
    def params_non_embedding(self) -> int:
        """Parameters of the proxy without token embedding, learned positions and readout: per block
        two norm gains, qkv (3 w^2), the attention projection (w^2) and the MLP (2 w h); the final norm."""
        w = self.width
        return self.depth * (2 * w + 4 * w * w + 2 * w * self.mlp_hidden) + w

    @property
    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward = 3 x forward, 2 FLOPs per multiply-add).

        ``6 * params_non_embedding + 6 * width * vocab_size + 12 * depth * width * seq_len``: the matrices,
        the readout matmul (real compute, unlike the embedding lookup), and attention's scores and values
        at full sequence length (PaLM's convention, which ignores the causal mask's halving).
        Norms, GELU, softmax and rotary are not counted.
        """
        return (
            6 * self.params_non_embedding
            + 6 * self.width * self.vocab_size
            + 12 * self.depth * self.width * self.seq_len
        )


def base_width_init_std(base_width: int) -> float:
    """``model.init_std = 0``'s rule: 0.02 * sqrt(256 / base_width).

    The Power paper's muP base (width 256, init std 0.02) carried to another base width by the
    1 / sqrt(fan_in) rule that muP itself applies to hidden matrices: 0.0566 at base width 32, the value
    experiment 1's diagnosis found better at every width (docs/mup.md).
    """
    return 0.02 * (256 / base_width) ** 0.5


@dataclass(frozen=True)
class DataConfig(Section):
    """Where training and validation tokens come from."""

    source: DataSource = setting(
        "synthetic",
        "synthetic (a seeded Markov language), tokens (uint16/uint32 .bin or .npy), text (byte-level file or folder), "
        "stdlib (byte-level, the running Python's standard library sources)",
        column="data",
    )
    path: str = setting(
        "",
        "tokens: a .bin/.npy file, or a folder with train.bin and val.bin; text: a file or folder",
        column="data",
    )
    dtype: Literal["uint16", "uint32"] = setting(
        "uint16", "element type of raw .bin token files", column="data_dtype"
    )
    synthetic_seed: int = setting(0, "synthetic: the seed of the language (its transition table)")
    zipf_exponent: float = setting(1.1, "synthetic: exponent s of the Zipf-like next-token weights k^-s")
    val_tokens: int = setting(65536, "size of the fixed held-out validation set, tokens")

    def __post_init__(self) -> None:
        if self.source in ("tokens", "text"):
            require(bool(self.path), "data", "path", f"is required when source = {self.source!r}")
        require(self.zipf_exponent > 0, "data", "zipf_exponent", "must be > 0")
        require(self.val_tokens > 0, "data", "val_tokens", "must be > 0")


@dataclass(frozen=True)
class OptimizerConfig(Section):
    """AdamW."""

    lr: float = setting(
        3e-3,
        "base peak LR (at base_width; muP divides hidden-matrix LRs by width/base_width); the cap lr_max for power",
    )
    beta1: float = setting(0.9, "Adam beta1")
    beta2: float = setting(0.95, "Adam beta2")
    eps: float = setting(1e-8, "Adam epsilon")
    weight_decay: float = setting(
        0.1,
        "AdamW weight decay of matrices: a step shrinks a matrix by its group's LR x its decay (see weight_decay_rule)",
    )
    weight_decay_rule: WeightDecayRule = setting(
        "coupled",
        "per-step decay of mup's hidden matrices: coupled lr/m x weight_decay (AdamW on muP's LR; the Power paper's "
        "code), independent lr x weight_decay at every width (microsoft/mup's MuAdamW). Embeddings and readout decay "
        "lr x weight_decay under both, norm gains not at all; for sp (m = 1) the rules are equal",
        legacy="coupled",
    )
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")

    def __post_init__(self) -> None:
        require(self.lr > 0, "optimizer", "lr", "must be > 0")
        for name in ("beta1", "beta2"):
            require(0 <= getattr(self, name) < 1, "optimizer", name, "must be in [0, 1)")
        require(self.eps > 0, "optimizer", "eps", "must be > 0")
        require(self.weight_decay >= 0, "optimizer", "weight_decay", "must be >= 0")
        require(self.grad_clip >= 0, "optimizer", "grad_clip", "must be >= 0")


@dataclass(frozen=True)
class ScheduleConfig(Section):
    """The LR schedule, a function of tokens seen (never steps)."""

    name: ScheduleName = setting(
        "wsd", "the LR schedule (formulas: powerlaw_cli/schedules.py)", column="schedule"
    )
    warmup_tokens: int = setting(0, "linear warmup from 0, tokens")
    decay_tokens: int = setting(0, "wsd/wsd_s/power: decay length, tokens (0: use decay_fraction)")
    decay_fraction: float = setting(
        0.1, "wsd/wsd_s/power: decay length as a fraction of the run (of each budget for wsd_s)"
    )
    decay_shape: DecayShape = setting("linear", "shape of the wsd/wsd_s/power decay")
    final_lr_ratio: float = setting(0.0, "LR at the end of a decay (or of cosine) as a fraction of its start")
    cycle_tokens: int = setting(0, "cyclic_cosine: length of one cosine cycle, tokens")
    alpha_tokens: int = setting(
        1_000_000, "inverse_sqrt: lr * sqrt(alpha / (t - warmup + alpha)), alpha in tokens"
    )
    decay_points: list[int] = setting([], "wsd_s: the token budgets at which the main branch decays in place")
    power_a: float = setting(
        4.0, "power: a in lr = min(lr_max, a * batch * n^b), batch in sequences, n in tokens"
    )
    power_b: float = setting(-0.51, "power: the exponent b")

    def __post_init__(self) -> None:
        for name in ("warmup_tokens", "decay_tokens", "cycle_tokens"):
            require(getattr(self, name) >= 0, "schedule", name, "must be >= 0")
        require(0 < self.decay_fraction <= 1, "schedule", "decay_fraction", "must be in (0, 1]")
        require(0 <= self.final_lr_ratio <= 1, "schedule", "final_lr_ratio", "must be in [0, 1]")
        require(self.alpha_tokens > 0, "schedule", "alpha_tokens", "must be > 0")
        if self.name == "cyclic_cosine":
            require(self.cycle_tokens > 0, "schedule", "cycle_tokens", "must be > 0 for cyclic_cosine")
        if self.name == "wsd_s":
            points = self.decay_points
            require(len(points) > 0, "schedule", "decay_points", "wsd_s needs at least one budget")
            require(all(p > 0 for p in points), "schedule", "decay_points", "must be > 0")
            require(
                list(points) == sorted(set(points)), "schedule", "decay_points", "must be strictly increasing"
            )
        require(self.power_a > 0, "schedule", "power_a", "must be > 0")
        require(self.power_b < 0, "schedule", "power_b", "must be < 0")

    def decay_length(self, budget: int) -> int:
        """Decay length in tokens for a run (or a wsd_s budget) of ``budget`` tokens."""
        return self.decay_tokens if self.decay_tokens > 0 else round(self.decay_fraction * budget)


@dataclass(frozen=True)
class TrainingConfig(Section):
    """The training loop."""

    tokens: int = setting(
        2_097_152, "planned training tokens; the run takes ceil(tokens / batch_tokens) steps"
    )
    batch_size: int = setting(16, "sequences per optimizer step (batch_tokens = batch_size * seq_len)")
    micro_batch_size: int = setting(
        0, "sequences per forward/backward (gradient accumulation; 0: the whole batch)", identity=False
    )
    seed: int = setting(0, "seed of the initialisation and of the order of training batches")
    eval_every_tokens: int = setting(
        0, "evaluate on the validation set every this many tokens (0: only at the end)", identity=False
    )
    divergence_factor: float = setting(
        3.0, "stop as diverged when the train loss exceeds this times the initial loss"
    )
    checkpoint_seconds: float = setting(
        600.0, "save resumable state at most this often, seconds (0: never)", identity=False
    )
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "auto: CUDA (bf16 autocast) when present, else CPU fp32", identity=False
    )
    compile: bool = setting(False, "torch.compile the model (helps on GPUs)", identity=False)

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_size"):
            require(getattr(self, name) > 0, "training", name, "must be > 0")
        require(self.micro_batch_size >= 0, "training", "micro_batch_size", "must be >= 0")
        if self.micro_batch_size:
            require(
                self.batch_size % self.micro_batch_size == 0,
                "training",
                "micro_batch_size",
                f"must divide batch_size={self.batch_size}",
            )
        require(self.eval_every_tokens >= 0, "training", "eval_every_tokens", "must be >= 0")
        require(self.divergence_factor > 1, "training", "divergence_factor", "must be > 1")
        require(self.checkpoint_seconds >= 0, "training", "checkpoint_seconds", "must be >= 0")


@dataclass(frozen=True)
class AveragingConfig(Section):
    """Weight averaging; a run reports the loss of the raw and of the averaged weights."""

    kind: AveragingKind = setting(
        "none",
        "none; ema (fixed time constant); anytime (half-life grows with training); tail (uniform over the last part)",
        column="averaging",
    )
    ema_tokens: int = setting(
        1_000_000, "ema: time constant, tokens (old-weight coefficient exp(-batch_tokens / ema_tokens))"
    )
    anytime_gamma: float = setting(25.0, "anytime: old-weight coefficient 0.5^(gamma / (t + 1)), t in steps")
    tail_fraction: float = setting(0.2, "tail: average uniformly over this last fraction of the run")

    def __post_init__(self) -> None:
        require(self.ema_tokens > 0, "averaging", "ema_tokens", "must be > 0")
        require(self.anytime_gamma > 0, "averaging", "anytime_gamma", "must be > 0")
        require(0 < self.tail_fraction <= 1, "averaging", "tail_fraction", "must be in (0, 1]")


SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "averaging": AveragingConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run: of the built-in proxy, or (``trainer``) of a user's trainer, whose
    free-form ``params`` enter its id (``trainer_spec.py``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    params: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.schedule.name == "wsd_s":
            require(
                self.training.tokens in self.schedule.decay_points,
                "training",
                "tokens",
                f"a wsd_s run's budget must be one of schedule.decay_points={self.schedule.decay_points}",
            )
        require(
            self.schedule.warmup_tokens < self.training.tokens,
            "schedule",
            "warmup_tokens",
            f"must be below training.tokens={self.training.tokens}",
        )

    @property
    def batch_tokens(self) -> int:
        """Tokens per optimizer step."""
        return self.training.batch_size * self.model.seq_len

    @property
    def steps(self) -> int:
        """Optimizer steps: enough to see at least ``training.tokens`` tokens."""
        return -(-self.training.tokens // self.batch_tokens)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data: {section: {field: value}} (a fresh copy, safe to modify); a trainer run's
        ``params`` and ``trainer`` too."""
        data: dict[str, Any] = {name: dict(getattr(self, name).values) for name in SECTION_NAMES}
        return data if self.trainer is None else {**data, **self._external()}

    def flat(self) -> dict[str, Any]:
        """Flat plain data: {"section.field": value}, and {"params.NAME": value} of a trainer run."""
        flat = {f"{name}.{k}": v for name in SECTION_NAMES for k, v in getattr(self, name).values.items()}
        return flat | {f"params.{k}": v for k, v in self.params.items()}

    def _external(self) -> dict[str, Any]:
        return {"params": dict(self.params), "trainer": dict(self.trainer or {})}

    def identity(self) -> dict[str, dict[str, Any]]:
        """The settings that change the run's result (what ``run_id`` hashes), without those at their
        ``legacy`` value (so that runs from before a setting existed keep their ids); a trainer run's params
        and trainer (its ``TRAINER_IDENTITY`` keys) too: a proxy run's id is as it always was."""
        identity = {name: getattr(self, name).identity() for name in SECTION_NAMES}
        return identity if self.trainer is None else {**identity, **self._external_identity()}

    def _external_identity(self) -> dict[str, Any]:
        trainer = {k: v for k, v in (self.trainer or {}).items() if k in TRAINER_IDENTITY}
        return {"params": dict(self.params), "trainer": trainer}

    @functools.cached_property
    def run_id(self) -> str:
        """A stable id: ``stable_hash(self.identity())``, a hash of exactly the settings that change the result,
        assembled from each section's cached canonical JSON (computed once per config)."""
        parts = {name: getattr(self, name).identity_json for name in SECTION_NAMES}
        if self.trainer is not None:
            parts |= {key: canonical_json(value) for key, value in self._external_identity().items()}
        text = "{" + ",".join(f'"{name}":{parts[name]}' for name in sorted(parts)) + "}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, overrides: dict[str, Any], where: str = "override") -> RunConfig:
        """A copy with dotted overrides such as {"optimizer.lr": 1e-3}, validated like a file."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in data or not name:
                raise ConfigError(
                    f"{where}: {key!r}: expected SECTION.FIELD with SECTION one of {', '.join(SECTION_NAMES)}"
                )
            data[section][name] = value
        return RunConfig.from_dict(data, where)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], where: str = "config", shared: dict[tuple, Any] | None = None
    ) -> RunConfig:
        """Build and validate from {section: {field: value}}; missing sections and fields take defaults.

        ``shared``: a dict kept across calls (one sweep's expansion) in which equal sections are built once
        and shared by every run that has them.
        """
        unknown = sorted(set(data) - {*SECTION_NAMES, "params", "trainer"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown section [{unknown[0]}]; valid sections: {', '.join(SECTION_NAMES)}"
            )
        sections: dict[str, Any] = {}
        if data.get("trainer") is not None:  # checked by trainer_spec when the sweep file was read
            sections |= {"params": dict(data.get("params") or {}), "trainer": dict(data["trainer"])}
        for name, section_type in SECTION_TYPES.items():
            raw = data.get(name, {})
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: [{name}] must be a table of settings, got {type(raw).__name__}")
            if shared is None:
                sections[name] = section_from_dict(section_type, raw, f"{where}: {name}")
                continue
            key = (
                name,
                *sorted(
                    (k, type(v).__name__, tuple(v) if isinstance(v, list) else v) for k, v in raw.items()
                ),
            )
            if key not in shared:
                shared[key] = section_from_dict(section_type, raw, f"{where}: {name}")
            sections[name] = shared[key]
        try:
            return cls(**sections)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def section_from_dict(section_type: type, raw: dict[str, Any], where: str) -> Any:
    """Build one section, coercing and checking each value against its field's type.

    ``where`` prefixes errors, e.g. "sweeps/demo.toml: model"; an unknown key lists the valid ones.
    """
    values = coerce_section(section_type, raw, where)
    try:
        return section_type(**values)
    except ConfigError as err:
        # __post_init__ names "section.field"; keep the file part of `where`.
        prefix = where.rsplit(": ", 1)[0] if ": " in where else ""
        raise ConfigError(f"{prefix}: {err}" if prefix else str(err)) from None


@functools.cache
def field_types(section_type: type) -> dict[str, Any]:
    """{field: annotation} of a settings section (resolved once per section type)."""
    return get_type_hints(section_type)


def coerce_section(section_type: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the names and types of a section's values (no cross-field checks) and coerce them."""
    hints = field_types(section_type)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{where}.{key}: unknown setting; valid: {', '.join(hints)}")
        values[key] = coerce(value, hints[key], f"{where}.{key}")
    return values


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints written as 1e6 become ints. Every number is finite
    (``bounds.FINITE``: no inf or nan, integers within 64 bits); ranges are the sections' own checks."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = get_args(annotation)
        return [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (Union, types.UnionType):
        raise TypeError(f"{where}: union settings are not supported")  # a programming error, not user input
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return FINITE.check(value, where, ConfigError)
    if annotation is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            value = math.inf
        return FINITE.check(value, where, ConfigError)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported setting type {annotation!r}")


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: one text for equal data, whatever its key order."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(data: Any, length: int = 16) -> str:
    """Hex digest of canonical JSON: key order and int/float spelling of equal numbers do not matter."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def in_identity(f: dataclasses.Field, value: Any) -> bool:
    """Whether field ``f`` holding ``value`` enters the run id: a result setting not at its ``legacy`` value."""
    legacy = f.metadata["legacy"]
    return f.metadata["identity"] and not (
        legacy is not NO_LEGACY and type(value) is type(legacy) and value == legacy
    )


def settings_table() -> list[tuple[str, str, Any, str, bool, Any]]:
    """(section, field, default, doc, identity, legacy) for every setting: the source of the docs'
    table; ``legacy`` is ``NO_LEGACY`` for settings without one."""
    rows = []
    for name, section_type in SECTION_TYPES.items():
        for f in fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(
                (name, f.name, default, f.metadata["doc"], f.metadata["identity"], f.metadata["legacy"])
            )
    return rows
