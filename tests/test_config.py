"""The configuration: params.yaml is conf/ composed, profiles and strategies are recorded, bad
overrides and bad values fail naming the key, a stage reads only what it declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO, merge
from seqmtl.config import compose, declared, load_config, parse, presets
from seqmtl.strategies import build_strategy
from seqmtl.tools.check import flatten

CONF = REPO / "conf"


def test_the_committed_params_are_the_default_composition() -> None:
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == compose([], CONF)


@pytest.mark.parametrize("profile", ["synthetic", "real", "full"])
def test_every_profile_records_its_name_and_keeps_every_key(profile: str) -> None:
    default, params = compose([], CONF), compose([f"profile={profile}"], CONF)
    assert params["profile"] == profile

    assert flatten(params).keys() == flatten(default).keys()


def test_the_real_profile_and_overrides_on_top() -> None:
    params = compose(["profile=real", "tasks.det.epochs=16", "seed=2"], CONF)
    assert params["data"]["source"] == "download"
    assert (params["subsample"]["n_train"], params["subsample"]["n_val"]) == (240, 300)
    assert params["tasks"]["det"] == {"epochs": 16, "lr": 0.002, "batch_size": 8, "image_size": 320}
    assert params["sequence"] == ["seg", "det", "cls"]
    assert params["seed"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("profile=nope", "Could not find 'profile/nope'"),
        ("tasks.cls.lrr=1", "Could not override 'tasks.cls.lrr'"),
        ("seed", "Error parsing override 'seed'"),
    ],
)
def test_bad_overrides_name_themselves(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"-S {override}: .*{message}"):
        compose([override], CONF)


def test_every_preset_builds_under_its_name() -> None:
    names = presets(CONF)
    assert {"naive", "replay", "derpp", "derpp_frozen", "ewc", "lwf", "gradnorm", "pcgrad",
            "uncertainty", "cumulative", "independent", "l2sp"} == set(names)  # fmt: skip
    for name in names:
        params = parse(compose([f"strategy={name}"], CONF))
        assert build_strategy(params.strategy, params.replay_buffer).name == name


def test_a_strategy_its_parts_and_their_params_are_overrides() -> None:
    params = compose(["profile=real", "strategy=ewc", "strategy.terms.ewc.lambda=1e5"], CONF)
    assert params["strategy"] == {"name": "ewc", "freeze": {}, "trunk": "shared",
                                  "terms": {"ewc": {"lambda": 1e5, "gamma": 1.0}},
                                  "rule": {"name": "sum"}}  # fmt: skip
    assert params["profile"] == "real"
    mixed = compose(["strategy=ewc", "strategy/terms=[replay,ewc]", "strategy/rule=gradnorm"], CONF)
    assert list(mixed["strategy"]["terms"]) == ["replay", "ewc"]
    assert mixed["strategy"]["rule"] == compose(["strategy=gradnorm"], CONF)["strategy"]["rule"]
    with pytest.raises(ValueError, match=r"-S strategy=nope: .*Could not find 'strategy/nope'"):
        compose(["strategy=nope"], CONF)
    with pytest.raises(ValueError, match=r"Could not override 'strategy\.terms\.ewc\.alpha'"):
        compose(["strategy=ewc", "strategy.terms.ewc.alpha=1"], CONF)


@pytest.mark.parametrize("profile", ["synthetic", "real", "full"])
def test_every_profile_parses(profile: str) -> None:
    assert parse(compose([f"profile={profile}"], CONF)).profile == profile


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"source": "ftp"}}, r"^data\.source must be one of synthetic, download"),
        ({"data": {"synthetic": {"n_val": 0}}}, r"^data\.synthetic\.n_val must be > 0, got 0$"),
        ({"subsample": {"det_classes": [1, 2]}}, r"^subsample\.det_classes must be an integer"),
        ({"model": {"head_layers": 4}}, r"^model\.head_layers must be one of 2, 3, got 4$"),
        ({"model": {"pretrained": "yes"}}, r"^model\.pretrained must be true or false"),
        ({"evaluate": {"bootstrap": {"resamples": -5}}}, r"^evaluate\.bootstrap\.resamples"),
        ({"gradients": {"images": 0}}, r"^gradients\.images must be > 0, got 0$"),
        ({"tasks": {"det": "fast"}}, r"^tasks\.det: expected a mapping, got 'fast'$"),
        (
            {"sequence": ["seg", "seg", "cls"]},
            r"^sequence must order the tasks seg, det, cls, each once, got \['seg', 'seg', 'cls'\]",
        ),
        ({"sequence": ["seg", "det"]}, r"^sequence must order the tasks seg, det, cls"),
        ({"train": {"warmup": 1.0}}, r"^train\.warmup must be in \[0, 1\), got 1\.0$"),
    ],
)
def test_bad_values_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(merge(compose([], CONF), change))


def test_a_missing_key_is_named() -> None:
    params = compose([], CONF)
    del params["train"]["warmup"]
    with pytest.raises(ValueError, match=r"^train\.warmup: missing from train$"):
        parse(params)


def test_a_stage_reads_only_what_it_declares(tmp_path: Path) -> None:
    """Every stage's declared params parse; an undeclared one read raises, naming it."""
    params = compose([], CONF)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        parse(declared(params, stage, REPO / "dvc.yaml"), stage)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    config = load_config("evaluate", tmp_path / "params.yaml", REPO / "dvc.yaml")
    assert config.tasks["cls"].batch_size == params["tasks"]["cls"]["batch_size"]
    with pytest.raises(AttributeError, match=r"^tasks\.cls\.lr is read by stage evaluate, which"):
        _ = config.tasks["cls"].lr
    stage2 = load_config("stage2", tmp_path / "params.yaml", REPO / "dvc.yaml")
    assert stage2.tasks["det"].lr == params["tasks"]["det"]["lr"]
    assert stage2.tasks["seg"].image_size == params["tasks"]["seg"]["image_size"]
    with pytest.raises(AttributeError, match=r"^tasks\.cls is read by stage stage2, which"):
        _ = stage2.tasks["cls"]
    with pytest.raises(AttributeError, match=r"^sequence is read by stage stage2, which"):
        _ = stage2.sequence
    with pytest.raises(AttributeError, match=r"^strategy is read by stage evaluate"):
        _ = config.strategy
