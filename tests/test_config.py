"""The configuration: params.yaml is conf/ composed, profiles are recorded, bad overrides fail."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from seqmtl.check import flatten
from seqmtl.config import compose

CONF = REPO / "conf"


def test_the_committed_params_are_the_default_composition() -> None:
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == compose([], CONF)


@pytest.mark.parametrize("profile", ["synthetic", "real", "full"])
def test_every_profile_records_its_name_and_keeps_every_key(profile: str) -> None:
    default, params = compose([], CONF), compose([f"profile={profile}"], CONF)
    assert params["profile"] == profile

    assert flatten(params).keys() == flatten(default).keys()


def test_the_real_profile_and_overrides_on_top() -> None:
    params = compose(["profile=real", "stage2.epochs=16", "seed=2"], CONF)
    assert params["data"]["source"] == "download"
    assert (params["subsample"]["n_train"], params["subsample"]["n_val"]) == (240, 300)
    assert params["stage2"] == {"epochs": 16, "lr": 0.002, "batch_size": 8, "image_size": 320}
    assert params["seed"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("profile=nope", "Could not find 'profile/nope'"),
        ("stage3.lrr=1", "Could not override 'stage3.lrr'"),
        ("seed", "Error parsing override 'seed'"),
    ],
)
def test_bad_overrides_name_themselves(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"-S {override}: .*{message}"):
        compose([override], CONF)
