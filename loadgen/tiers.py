"""Service tiers to judge a replay against: opscale's defaults (opscale.model.tiers), or a YAML file.

The file is a list of tiers, or a mapping with a `tiers` list (so a scenario file, or the live settings
file, works as it is), for example:

    tiers:
      - {name: chat, ttft_slo_s: 1.0, tbt_slo_s: 0.05}
      - {name: offline, ttft_slo_s: 900, tbt_slo_s: 1.0, deadline_s: 7200, priority: 1}
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from opscale.model import DEFAULT_TIERS, TierModel, TierSpec


class TiersFileError(ValueError):
    """A tiers file that cannot be used; the message names the file and the field."""


def load_tiers(path: Path | None) -> dict[str, TierSpec]:
    """The tiers in `path`, or opscale's default tiers when `path` is None."""
    if path is None:
        return dict(DEFAULT_TIERS)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TiersFileError(f"tiers file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TiersFileError(f"tiers file {path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise TiersFileError(f"tiers file {path}: invalid YAML: {exc}") from None
    if isinstance(data, dict):
        if "tiers" not in data:
            raise TiersFileError(f"tiers file {path}: expected a list of tiers or a mapping with a 'tiers' list")
        data = data["tiers"]
    try:
        tiers = TypeAdapter(list[TierModel]).validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(f"tiers[{'.'.join(str(p) for p in e['loc'])}]: {e['msg']}" for e in exc.errors())
        raise TiersFileError(f"tiers file {path}: {problems}") from None
    if not tiers:
        raise TiersFileError(f"tiers file {path}: names no tier")
    specs: dict[str, TierSpec] = {}
    for tier in tiers:
        if tier.name in specs:
            raise TiersFileError(f"tiers file {path}: tier {tier.name!r} appears twice")
        specs[tier.name] = tier.spec()
    return specs
