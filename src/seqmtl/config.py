"""The configuration as `dvc exp run` composes it: conf/config.yaml, the chosen profile
(conf/profile/), then overrides (`KEY=VALUE` or `profile=NAME`, Hydra's override grammar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF = Path("conf")


def compose(overrides: list[str], conf: Path = CONF) -> dict[str, Any]:
    """The params that `dvc exp run -S o1 -S o2 …` would write to params.yaml; an unknown key,
    profile or malformed override raises a ValueError naming it."""
    try:
        with initialize_config_dir(str(conf.resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"-S {' -S '.join(overrides)}: {reason}") from None
    return OmegaConf.to_container(cfg, resolve=True)
