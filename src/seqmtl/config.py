"""The configuration: composed by `dvc exp run` (Hydra: conf/config.yaml, the chosen profile and
strategy, then `-S` overrides) into params.yaml, and loaded from it here into typed sections.

`parse` validates a whole params mapping once: an unknown key, a missing one, a wrong type or a
bad value is one ValueError naming the key. `load_config(stage)` gives a stage the params its
dvc.yaml entry declares after validating the whole file; reading any other param raises an
AttributeError naming it, so a stage cannot depend on what it does not declare.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

TASKS = ("seg", "det", "cls")
"""The tasks a configuration may name (`sequence`, `tasks`), in the order of the head's output
channels; each is registered in `seqmtl.data.datasets.READERS` (its reader) and
`seqmtl.tasks.registry.REGISTRY` (its loss, metric, head channels and output)."""
CONF = Path("conf")
PARAMS = Path("params.yaml")
PIPELINE = Path("dvc.yaml")


class Undeclared:
    """The value of a param that the loading stage does not declare."""

    def __init__(self, key: str, stage: str) -> None:
        self.key, self.stage = key, stage


class Declared(dict):
    """A mapping section (e.g. `tasks`) of which a stage may declare only some entries; reading an
    absent one raises an AttributeError naming it where the loading stage did not declare it."""

    def __init__(self, entries: dict[str, Any], key: str, stage: str | None) -> None:
        super().__init__(entries)
        self.key, self.stage = key, stage

    def __missing__(self, name: str) -> Any:
        if self.stage is None:
            raise KeyError(f"{self.key}.{name}")
        raise AttributeError(
            f"{self.key}.{name} is read by stage {self.stage}, which does not declare it in "
            "dvc.yaml's params"
        )


@dataclass(frozen=True)
class Section:
    """A typed params section; reading an undeclared param raises an AttributeError."""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if isinstance(value, Undeclared):
            raise AttributeError(
                f"{value.key} is read by stage {value.stage}, which does not declare it in "
                "dvc.yaml's params"
            )
        return value

    def as_dict(self) -> dict[str, Any]:
        """The declared params as a mapping (nested sections as mappings)."""
        values = {f.name: object.__getattribute__(self, f.name) for f in fields(self)}
        kept = {n: v for n, v in values.items() if not isinstance(v, Undeclared)}
        return {name: plain(value) for name, value in kept.items()}

    @classmethod
    def arrange(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The section's fields from its params mapping (default: the mapping itself)."""
        return data

    def check(self, key: str) -> None:
        """Constraints between fields (default: none); a ValueError names the param."""


def plain(value: Any) -> Any:
    """A section, or a mapping of them, as plain mappings."""
    if isinstance(value, Section):
        return value.as_dict()
    if isinstance(value, Declared):
        return {name: plain(entry) for name, entry in value.items()}
    return value


def rule(test: Callable[[Any], bool], text: str) -> Any:
    """A field whose value must pass `test` (`text` says what it must be)."""
    return field(metadata={"rule": (test, text)})


def positive() -> Any:
    return rule(lambda v: v > 0, "> 0")


def at_least(low: float) -> Any:
    return rule(lambda v: v >= low, f">= {low:g}")


def within(low: float, high: float, *, open_high: bool = False) -> Any:
    end = ")" if open_high else "]"
    return rule(
        lambda v: low <= v and (v < high if open_high else v <= high), f"in [{low:g}, {high:g}{end}"
    )


@dataclass(frozen=True)
class Synthetic(Section):
    n_train: int = positive()  # images per dataset in the train split
    n_val: int = positive()
    size: int = at_least(32)  # side of the generated images


@dataclass(frozen=True)
class Data(Section):
    source: Literal["synthetic", "download"]
    mirror: str | None  # a URL or local folder holding the official archives
    synthetic: Synthetic


@dataclass(frozen=True)
class Subsample(Section):
    n_train: int = positive()
    n_val: int = positive()
    det_classes: int | list[str]  # the N categories in the most images, or their names
    val_seed: int | None  # draws the val sets alone, fixed across seed and n_train (or null)


@dataclass(frozen=True)
class Model(Section):
    backbone: str
    pretrained: bool
    channels: int = positive()
    head_layers: Literal[2, 3]
    batchnorm: Literal["frozen", "train"]


@dataclass(frozen=True)
class Train(Section):
    weight_decay: float = at_least(0)
    backbone_lr: float = at_least(0)
    clip_grad_norm: float | None = positive()
    seg_loss_stride: int = positive()
    warmup: float = within(0, 1, open_high=True)
    eval_every: int = positive()
    checkpoint_every: int = positive()
    score_threshold: float = within(0, 1)
    precision: Literal["fp32", "bf16"]
    processes: int = positive()


@dataclass(frozen=True)
class TaskSettings(Section):
    """How one task is trained: in its stage of the sequence and in its single-task reference;
    it is also replayed, evaluated and analysed at its `image_size`."""

    epochs: int = positive()
    lr: float = positive()
    batch_size: int = positive()
    image_size: int = positive()

    def check(self, key: str) -> None:
        if self.image_size % 32:
            raise ValueError(f"{key}.image_size must be a multiple of 32, got {self.image_size}")


@dataclass(frozen=True)
class ReplayBuffer(Section):
    per_task: int = positive()  # buffered training samples of each old task
    batch_size: int = positive()  # replayed samples of each old task in every step
    weight: float = at_least(0)  # λ on the replayed losses


@dataclass(frozen=True)
class Bootstrap(Section):
    resamples: int = positive()
    det_resamples: int = positive()


@dataclass(frozen=True)
class Latency(Section):
    image_size: int = positive()
    rounds: int = positive()


@dataclass(frozen=True)
class Evaluate(Section):
    max_drop: float = within(0, 1)
    bootstrap: Bootstrap
    chance_margin: float = within(0, 1, open_high=True)
    latency: Latency


@dataclass(frozen=True)
class Gradients(Section):
    images: int | None = positive()
    batch_small: int = positive()
    batch_big: int = positive()
    projection_dim: int = positive()
    tsne_perplexity: int = positive()

    def check(self, key: str) -> None:
        if self.batch_big % self.batch_small or self.batch_big == self.batch_small:
            raise ValueError(f"{key}.batch_big must be a multiple of batch_small greater than it")


@dataclass(frozen=True)
class Strategy(Section):
    """A strategy (presets: conf/strategy/): its name, its loss terms (name → params, in the
    order they apply), its gradient rule ({name, params}), the parts frozen from which stage,
    and one trunk shared by every task or one per task. `seqmtl.strategies` checks the parts'
    params."""

    name: str
    terms: dict[str, Any]
    rule: dict[str, Any]
    freeze: dict[str, Any]
    trunk: Literal["shared", "per_task"]


@dataclass(frozen=True)
class Config(Section):
    seed: int = at_least(0)
    device: str  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    profile: str
    strategy: Strategy
    data: Data
    subsample: Subsample
    model: Model
    train: Train
    sequence: list[str]
    tasks: dict[str, TaskSettings]
    replay_buffer: ReplayBuffer
    evaluate: Evaluate
    gradients: Gradients

    def check(self, key: str) -> None:
        if sorted(self.sequence) != sorted(TASKS):
            raise ValueError(
                f"sequence must order the tasks {', '.join(TASKS)}, each once, got {self.sequence}"
            )
        if sorted(self.tasks) != sorted(TASKS):
            raise ValueError(
                f"tasks must hold the settings of {', '.join(TASKS)}, got {list(self.tasks)}"
            )


def parse(data: Any, stage: str | None = None) -> Config:
    """`data` (params.yaml's mapping) as a Config. Without `stage`, every param must be present;
    with it, `data` holds the params `stage` declares and the others read as undeclared."""
    return _section(Config, data, "", stage)


def _section(cls: type[Section], data: Any, key: str, stage: str | None) -> Any:
    where = key or "params.yaml"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    data = cls.arrange(data)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{key + '.' if key else ''}{unknown[0]}: unknown param of {where}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec in known.items():
        path = f"{key}.{name}" if key else name
        if name not in data:
            if stage is None:
                raise ValueError(f"{path}: missing from {where}")
            values[name] = Undeclared(path, stage)
            continue
        values[name] = _value(hints[name], data[name], path, stage)
        test, text = spec.metadata.get("rule", (None, ""))
        if test is not None and values[name] is not None and not test(values[name]):
            raise ValueError(f"{path} must be {text}, got {data[name]!r}")
    section = cls(**values)
    if not any(isinstance(v, Undeclared) for v in values.values()):
        section.check(key)
    return section


def _value(kind: Any, value: Any, key: str, stage: str | None) -> Any:
    """`value` as type `kind` (a Section, scalar, Literal, list, dict or union of them)."""
    origin, args = get_origin(kind), get_args(kind)
    if isinstance(kind, type) and issubclass(kind, Section):
        return _section(kind, value, key, stage)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _value(option, value, key, stage)
            except ValueError:
                continue
        raise ValueError(f"{key} must be {_describe(kind)}, got {value!r}")
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
    elif origin is list:
        if isinstance(value, list) and all(isinstance(v, args[0]) for v in value):
            return value
    elif origin is dict:
        if isinstance(value, dict) and isinstance(args[1], type) and issubclass(args[1], Section):
            return Declared(
                {name: _section(args[1], v, f"{key}.{name}", stage) for name, v in value.items()},
                key,
                stage,
            )
        if isinstance(value, dict):
            return value
    elif kind is type(None):
        if value is None:
            return None
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise ValueError(f"{key} must be {_describe(kind)}, got {value!r}")


def _describe(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list", dict: "a mapping", type(None): "null"}  # fmt: skip
    return names.get(origin or kind, str(kind))


def templated(value: Any, params: dict[str, Any]) -> Any:
    """`value` (a part of dvc.yaml) with the `${…}` templates of its strings, mapping keys
    included, resolved against `params` as DVC resolves them (OmegaConf's grammar covers the
    forms dvc.yaml uses: `${sequence[1]}`)."""
    from omegaconf import OmegaConf

    def resolve(text: str) -> str:
        if "${" not in text:
            return text
        node = OmegaConf.create(params | {"_templated": text})
        return OmegaConf.to_container(node, resolve=True)["_templated"]

    if isinstance(value, dict):
        return {resolve(k): templated(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [templated(v, params) for v in value]
    return resolve(value) if isinstance(value, str) else value


def declared(params: dict[str, Any], stage: str, pipeline: Path = PIPELINE) -> dict[str, Any]:
    """The part of `params` that `stage` of `pipeline` (dvc.yaml) lists under `params:` (keys
    of params.yaml, dotted for nested ones, with DVC's `${…}` templates, e.g.
    `tasks.${sequence[1]}`, resolved against `params` as DVC resolves them)."""
    with open(pipeline) as handle:
        keys = templated(yaml.safe_load(handle)["stages"][stage].get("params", []), params)
    subset: dict[str, Any] = {}
    for key in keys:
        *parents, leaf = key.split(".")
        source, target = params, subset
        for parent in parents:
            source, target = source[parent], target.setdefault(parent, {})
        target[leaf] = source[leaf]
    return subset


def load_config(stage: str | None = None, path: Path = PARAMS, pipeline: Path = PIPELINE) -> Config:
    """`path` (params.yaml) validated and typed: all of it, or (with `stage`) only the params
    that `stage` declares in `pipeline` (dvc.yaml)."""
    with open(path) as handle:
        params = yaml.safe_load(handle)
    config = parse(params)
    return config if stage is None else parse(declared(params, stage, pipeline), stage)


def presets(conf: Path = CONF) -> list[str]:
    """The strategy presets: the files of conf/strategy/, by name."""
    return sorted(p.stem for p in (conf / "strategy").glob("*.yaml"))


def compose(overrides: list[str], conf: Path = CONF) -> dict[str, Any]:
    """The params that `dvc exp run -S o1 -S o2 …` would write to params.yaml; an unknown key,
    profile or strategy, or a malformed override, raises a ValueError naming it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(conf.resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"-S {' -S '.join(overrides)}: {reason}") from None
    return OmegaConf.to_container(cfg, resolve=True)
