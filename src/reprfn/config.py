"""The training configuration: one typed dataclass per section, every value checked at load.

Why check everything up front: a value of the wrong type or range used to fail late (after the run
folder was made, after minutes of decoding) with a message that never named the key, or not at
all (``train.iters=-5`` "trained" zero iterations and wrote random weights with exit 0). Each
value is now checked when the configuration is loaded, before anything is written, and every
refusal is one line naming the key, e.g. ``config train.iters: expected a positive integer, got -5``.

Layering: the dataclass defaults, then the YAML file, then ``--set KEY=VALUE`` overrides (values
are YAML). ``loss`` stays an open mapping of loss names to weights; the names are checked by
``losses.loss_weights``.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import yaml

from .errors import ConfigError
from .losses import loss_weights

if TYPE_CHECKING:
    from .models.rep import Mode

SCALES = (2, 3, 4)


class Refused(Exception):
    """Raised by a value check; carries what was expected (the caller names the key and value)."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


T = TypeVar("T")
Check = Callable[[object], T]  # the value in its canonical type, or Refused


def _checked(check: Check[object]) -> dict[str, Check[object]]:
    """Field metadata holding the value's check."""
    return {"check": check}


# ----------------------------------------------------------------------------------------------
# Value checks: each returns the value in its canonical type or raises Refused
# ----------------------------------------------------------------------------------------------


def as_number(value: object) -> float | int | None:
    """A finite int or float, or None. Strings that Python reads as numbers count: PyYAML (YAML
    1.1) reads ``5e-4`` and ``1.0e5`` as strings, and refusing what the user clearly meant as a
    number would only be pedantic. Booleans are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", ""))
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def integer(minimum: int, maximum: int | None = None) -> Check[int]:
    """An integer in ``[minimum, maximum]``; a float with an integral value (``1.0e5``) is accepted."""
    expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    if maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"

    def check(value: object) -> int:
        n = as_number(value)
        if n is None or not float(n).is_integer() or n < minimum or (maximum is not None and n > maximum):
            raise Refused(expected)
        return int(n)

    return check


def real(minimum: float = 0.0, *, strict: bool = False, below: float | None = None) -> Check[float]:
    """A finite number ``> minimum`` (``strict``) or ``>= minimum``, and ``< below`` when given."""
    if below is not None:
        expected = f"a number in [{minimum:g}, {below:g})"
    elif minimum == 0:
        expected = "a positive number" if strict else "a non-negative number"
    else:
        expected = f"a number {'>' if strict else '>='} {minimum:g}"

    def check(value: object) -> float:
        n = as_number(value)
        if n is None or n < minimum or (strict and n == minimum) or (below is not None and n >= below):
            raise Refused(expected)
        return float(n)

    return check


def choice(*options: T) -> Check[T]:
    """One of ``options`` (compared as given: ``2`` is not ``"2"``)."""
    expected = "one of " + ", ".join(str(o) for o in options)

    def check(value: object) -> T:
        for option in options:
            if not isinstance(value, bool) and value == option:
                return option
        raise Refused(expected)

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Refused("true or false")
    return value


@overload
def path(optional: Literal[False]) -> Check[str]: ...


@overload
def path(optional: bool) -> Check[str | None]: ...


def path(optional: bool) -> Check[str | None]:
    """A file or folder name (not checked for existence here: the consumer names what is missing)."""
    expected = "a path or null" if optional else "a path"

    def check(value: object) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise Refused(expected)
        return value

    return check


def paths(optional: bool) -> Check[tuple[str, ...] | None]:
    """A folder or a non-empty list of folders, as a tuple."""
    expected = "a folder or a list of folders" + (", or null" if optional else "")
    one = path(optional=False)

    def check(value: object) -> tuple[str, ...] | None:
        if value is None and optional:
            return None
        items = [value] if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise Refused(expected)
        try:
            return tuple(one(v) for v in items)
        except Refused:
            raise Refused(expected) from None

    return check


def model_name(value: object) -> str:
    from .models import names

    return choice(*names())(value)


def device(value: object) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (availability is checked when the run starts)."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise Refused("auto, cpu, cuda, cuda:N or mps")
    return value


def betas(value: object) -> tuple[float, float]:
    """Adam's two decay rates, each in [0, 1)."""
    rate = real(0.0, below=1.0)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise Refused("two numbers in [0, 1), e.g. [0.9, 0.999]")
    try:
        return (rate(value[0]), rate(value[1]))
    except Refused:
        raise Refused("two numbers in [0, 1), e.g. [0.9, 0.999]") from None


# ----------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="reprfn", metadata=_checked(model_name))
    scale: int = field(default=4, metadata=_checked(choice(*SCALES)))
    channels: int = field(default=48, metadata=_checked(integer(1)))
    blocks: int = field(default=4, metadata=_checked(integer(1)))
    in_channels: int = field(default=3, metadata=_checked(choice(1, 3)))
    mode: Mode = field(default="online", metadata=_checked(choice("online", "branches")))
    init: str | None = field(default=None, metadata=_checked(path(optional=True)))


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = field(default=("../shared/data/train",), metadata=_checked(paths(optional=False)))
    train_lr: tuple[str, ...] | None = field(default=None, metadata=_checked(paths(optional=True)))
    cache_dir: str | None = field(default=None, metadata=_checked(path(optional=True)))
    workers: int = field(default=0, metadata=_checked(integer(0)))
    resident: bool = field(default=False, metadata=_checked(boolean))


@dataclass(frozen=True)
class ValConfig:
    dir: str | None = field(default=None, metadata=_checked(path(optional=True)))
    every: int = field(default=1000, metadata=_checked(integer(1)))
    max_images: int = field(default=0, metadata=_checked(integer(0)))


@dataclass(frozen=True)
class TrainConfig:
    iters: int = field(default=500_000, metadata=_checked(integer(1)))
    batch_size: int = field(default=64, metadata=_checked(integer(1)))
    patch_size: int = field(default=192, metadata=_checked(integer(1)))
    lr: float = field(default=5e-4, metadata=_checked(real(strict=True)))
    lr_schedule: str = field(default="step", metadata=_checked(choice("step", "cosine")))
    lr_step: int = field(default=200_000, metadata=_checked(integer(1)))
    lr_gamma: float = field(default=0.5, metadata=_checked(real(strict=True)))
    lr_min: float = field(default=0.0, metadata=_checked(real()))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_checked(betas))
    eps: float = field(default=1e-8, metadata=_checked(real(strict=True)))
    grad_clip: float = field(default=0.0, metadata=_checked(real()))
    ema: float = field(default=0.0, metadata=_checked(real(below=1.0)))
    checkpoint_every: int = field(default=1000, metadata=_checked(integer(1)))
    log_every: int = field(default=100, metadata=_checked(integer(1)))
    amp: str = field(default="none", metadata=_checked(choice("none", "bf16", "fp16")))
    channels_last: bool = field(default=False, metadata=_checked(boolean))
    device: str = field(default="auto", metadata=_checked(device))
    threads: int = field(default=0, metadata=_checked(integer(0)))
    compile: bool = field(default=False, metadata=_checked(boolean))
    time_limit: float = field(default=0.0, metadata=_checked(real()))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "val": ValConfig, "train": TrainConfig}


@dataclass(frozen=True)
class Config:
    """A checked training configuration (build one with ``parse_config`` or ``load_config``)."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: Mapping[str, float] = field(default_factory=lambda: {"charbonnier": 0.9, "fft": 0.1})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists: what ``config.yaml`` and checkpoints store."""
        return _plain(asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


SEED = integer(0, 2**32 - 1)  # numpy's seed range


def _value(key: str, check: Check[T], value: object) -> T:
    try:
        return check(value)
    except Refused as exc:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ConfigError(f"config {key}: expected {exc.expected}, got {shown}") from None


def _section(cls: type, raw: Any, name: str) -> Any:
    """One section from its mapping; an unknown key is refused by name (a typo would otherwise be
    a silently ignored setting)."""
    if raw is None:  # `val:` with every key commented out
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config {name}: expected a mapping, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown config key '{name}.{key}'")
    return cls(**{k: _value(f"{name}.{k}", known[k].metadata["check"], v) for k, v in raw.items()})


def _loss(raw: object) -> dict[str, float]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"config loss: expected a mapping of loss names to weights, got {raw!r}")
    weights = {str(k): _value(f"loss.{k}", real(), v) for k, v in raw.items()}
    loss_weights(weights)  # names and at least one non-zero term
    return weights


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Check a configuration mapping (any subset of the keys; the rest take their defaults)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in ("seed", "loss", *SECTIONS):
            raise ConfigError(f"unknown config key {key!r}")
    fields: dict[str, Any] = {name: _section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    if "loss" in raw:
        fields["loss"] = _loss(raw["loss"])
    cfg = Config(seed=_value("seed", SEED, raw.get("seed", 0)), **fields)
    _check_together(cfg)
    return cfg


def _check_together(cfg: Config) -> None:
    """Checks that involve two keys."""
    t, scale = cfg.train, cfg.model.scale
    if t.patch_size % scale:
        raise ConfigError(f"config train.patch_size: expected a multiple of model.scale ({scale}), got {t.patch_size}")
    if t.lr_schedule == "cosine" and t.lr_min > t.lr:
        raise ConfigError(f"config train.lr_min: expected at most train.lr ({t.lr:g}) for the cosine schedule, "
                          f"got {t.lr_min:g}")


DEFAULTS: dict[str, Any] = Config().to_dict()


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, recursively for mappings (``parse_config`` checks the result)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(out.get(key), Mapping) and isinstance(value, Mapping) and key != "loss":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.iters=10", "data.train=[a, b]"]`` -> nested dict; values are YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: not a YAML value ({str(exc).splitlines()[0]})") from None
        node = out
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parents[: depth + 1])} was set to a value, not a mapping")
        node[leaf] = value
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: YAML leaves that to the
    loader, and PyYAML keeps the last silently, so a second ``lr:`` lower in a file replaced the
    first without a word."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, Hashable) and key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice (line {line})",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """The defaults, then the YAML file at ``path``, then ``--set`` overrides, checked."""
    user: Any = {}
    if path is not None:
        try:
            user = yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(user, Mapping):
            raise ConfigError(f"{path}: a config must be a YAML mapping")
    return parse_config(merge(merge(DEFAULTS, user), parse_set(overrides)))
