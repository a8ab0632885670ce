"""The region catalogue: `regions.yaml` loaded into `RegionSpec` values, and price lookups.

A region lists the SKUs it offers (`SkuOffer`: GPU quota, provisioning delays, optional explicit prices),
its spot behaviour (preemption rate per hour, notice before termination) and round trips to other
regions. Prices are per GPU-hour. Where an offer gives no explicit price, the price is the SKU's list
price from `skus.yaml` times the region's multiplier; `price(region, sku, purchase)` falls back to the
SKU's own list price for a region the catalogue does not know, so a scenario with made-up region names
still has a cost.

The built-in catalogue ships as package data and is parsed once; a file can replace it. Every field is
validated and an error names the file, the region, the SKU offer and the field. No I/O happens except
reading the file asked for.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from opscale.model import Purchase, Region, Sku
from opscale.perf import Catalog, UnknownNameError, default_catalog

REGIONS_FILE = "regions.yaml"
INTRA_REGION_RTT_MS = 1.0  # within one region (same metro, across availability zones)


class RegionCatalogError(ValueError):
    """A region catalogue file is unreadable or one of its entries is malformed."""


@dataclasses.dataclass(frozen=True, slots=True)
class SkuOffer:
    """One SKU as a region sells it. Prices are per GPU-hour; None means "list price × region multiplier"."""

    sku: str
    gpu_quota: int
    on_demand_provision_s: float
    spot_provision_s: float
    on_demand_usd_per_gpu_h: float | None = None
    spot_usd_per_gpu_h: float | None = None

    def provision_s(self, purchase: Purchase) -> float:
        """Typical seconds from request to a running VM."""
        return self.spot_provision_s if purchase is Purchase.SPOT else self.on_demand_provision_s


@dataclasses.dataclass(frozen=True, slots=True)
class RegionSpec:
    """A cloud region: who runs it, what it sells and how its spot capacity behaves."""

    name: str
    provider: str
    provider_region: str
    offers: tuple[SkuOffer, ...]
    spot_preemptions_per_h: float  # Poisson rate of preemption of one running spot VM
    spot_notice_s: float  # warning given before a preempted VM is terminated
    shutdown_s: float = 60.0  # from a release request to the VM being gone
    price_multiplier: float = 1.0  # on-demand, over the SKU's list price
    spot_price_multiplier: float = 1.0  # spot, over the SKU's spot list price
    rtt_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def offer(self, sku: str) -> SkuOffer | None:
        key = sku.casefold()
        return next((o for o in self.offers if o.sku.casefold() == key), None)

    def gpu_quota(self, sku: str) -> int:
        """GPUs of `sku` this region lets us hold at once (0 for a SKU it does not offer)."""
        offer = self.offer(sku)
        return offer.gpu_quota if offer is not None else 0

    def to_model(self) -> Region:
        """The plain `opscale.model.Region` (quotas and round trips) the planners take."""
        return Region(self.name, {o.sku: o.gpu_quota for o in self.offers}, dict(self.rtt_ms))


@dataclasses.dataclass(frozen=True, slots=True)
class RegionCatalog:
    """Regions by name (case-insensitive), priced against a SKU catalogue."""

    regions: tuple[RegionSpec, ...]
    skus: Catalog
    _by_key: Mapping[str, RegionSpec] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[str, RegionSpec] = {}
        for region in self.regions:
            if region.name.casefold() in by_key:
                raise RegionCatalogError(f"duplicate region name {region.name!r} (names are case-insensitive)")
            by_key[region.name.casefold()] = region
        object.__setattr__(self, "_by_key", by_key)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def get(self, name: str) -> RegionSpec | None:
        return self._by_key.get(name.casefold())

    def region(self, name: str) -> RegionSpec:
        """The region called `name`; UnknownNameError lists the known ones otherwise."""
        found = self.get(name)
        if found is None:
            raise UnknownNameError("region", name, self.names)
        return found

    def price(self, region: str, sku: str, purchase: Purchase) -> float:
        """USD per GPU-hour of `sku` bought as `purchase` in `region`.

        An explicit price on the region's offer wins; otherwise the SKU's list price times the region's
        multiplier; a region not in the catalogue gets the SKU's list price unchanged (the US default).

        >>> catalog = default_region_catalog()
        >>> catalog.price("us-east", "H100-80GB", Purchase.ON_DEMAND)
        6.88
        >>> catalog.price("somewhere-else", "H100-80GB", Purchase.SPOT)
        2.75
        """
        spec: Sku = self.skus.sku(sku)
        list_price = spec.spot_price_usd_per_h if purchase is Purchase.SPOT else spec.price_usd_per_h
        found = self.get(region)
        if found is None:
            return list_price
        offer = found.offer(sku)
        explicit = None
        if offer is not None:
            explicit = offer.spot_usd_per_gpu_h if purchase is Purchase.SPOT else offer.on_demand_usd_per_gpu_h
        if explicit is not None:
            return explicit
        multiplier = found.spot_price_multiplier if purchase is Purchase.SPOT else found.price_multiplier
        return round(list_price * multiplier, 6)

    def rtt_ms(self, a: str, b: str) -> float:
        """Round trip between two regions (INTRA_REGION_RTT_MS within one)."""
        first, second = self.region(a), self.region(b)
        if first is second:
            return INTRA_REGION_RTT_MS
        found = first.rtt_ms.get(second.name)
        if found is None:
            raise KeyError(f"no round-trip time between regions {first.name!r} and {second.name!r}")
        return found

    def rtt_table(self, regions: Iterable[str]) -> dict[tuple[str, str], float]:
        """The round trip in ms between every ordered pair of distinct `regions`, as a fleet spread over
        them needs it. A region the catalogue does not know, or a pair it gives no round trip for, is a
        RegionCatalogError naming it (there is no flat default: a made-up distance would decide where
        requests are served)."""
        names = sorted(set(regions))
        unknown = [name for name in names if self.get(name) is None]
        if unknown:
            raise RegionCatalogError(f"regions {unknown} are not in the region catalogue ({REGIONS_FILE}); known "
                                     f"regions: {', '.join(self.names)}")
        table: dict[tuple[str, str], float] = {}
        for a in names:
            for b in names:
                if a != b:
                    try:
                        table[(a, b)] = self.rtt_ms(a, b)
                    except KeyError:
                        raise RegionCatalogError(f"the region catalogue ({REGIONS_FILE}) gives no round trip "
                                                 f"between regions {a!r} and {b!r}: add it to rtt_ms") from None
        return table


def load_regions(path: str | Path | None = None, skus: Catalog | None = None) -> RegionCatalog:
    """The region catalogue in the file `path`, or the built-in one when None."""
    if path is None and skus is None:
        return default_region_catalog()
    sku_catalog = skus if skus is not None else default_catalog()
    if path is None:
        text = resources.files("opscale").joinpath("data", REGIONS_FILE).read_text(encoding="utf-8")
        return parse_regions(text, f"opscale/data/{REGIONS_FILE}", sku_catalog)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegionCatalogError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    return parse_regions(text, str(file), sku_catalog)


@functools.cache
def default_region_catalog() -> RegionCatalog:
    """The catalogue shipped with opscale, parsed once per process (it is immutable package data)."""
    return load_regions(None, default_catalog())


def account_catalog(base: RegionCatalog, regions: Iterable[str], *, stand_ins: Mapping[str, str] | None = None,
                    quotas: Mapping[str, Mapping[str, int]] | None = None, spot_preemptions_per_h: float | None = None,
                    spot_notice_s: float | None = None, field: str = "vms") -> RegionCatalog:
    """The regions an account buys VMs in: each of `regions` as `base` has it, or as its stand-in
    (`stand_ins`: a region `base` does not know -> the catalogue region whose offers it takes), with
    `quotas` (region -> SKU -> GPUs) replacing the catalogue's and, when given, every region's spot rate
    and notice. The simulator's `vms:` block and the live planner's `cloud:` settings both build their
    quotas here; a ValueError names the setting (`field`.stand_ins.REGION, `field`.quotas.REGION.SKU)
    that cannot be met."""
    stand_ins, quotas = dict(stand_ins or {}), dict(quotas or {})
    wanted = sorted(set(regions))
    for region, target in sorted(stand_ins.items()):
        if region not in wanted:
            raise ValueError(f"{field}.stand_ins.{region}: no hosts in that region; regions: {wanted}")
        if base.get(target) is None:
            raise ValueError(f"{field}.stand_ins.{region}: {target!r} is not a catalogue region; known: "
                             f"{', '.join(base.names)}")
    for region in sorted(quotas):
        if region not in wanted:
            raise ValueError(f"{field}.quotas.{region}: not a region of the fleet (nor a stand-in); regions: {wanted}")
    specs = []
    for region in wanted:
        source = stand_ins.get(region, region)
        spec = base.get(source)
        if spec is None:
            raise ValueError(f"{field}.stand_ins: region {region!r} is not in the region catalogue (known: "
                             f"{', '.join(base.names)}); name the catalogue region it stands in for")
        offers = []
        region_quotas = quotas.get(region, {})
        for sku in sorted(region_quotas):
            if spec.offer(sku) is None:
                raise ValueError(f"{field}.quotas.{region}.{sku}: region {source!r} does not sell {sku}; it sells "
                                 f"{', '.join(o.sku for o in spec.offers)}")
            if region_quotas[sku] < 0:
                raise ValueError(f"{field}.quotas.{region}.{sku}: a quota is >= 0 GPUs, got {region_quotas[sku]}")
        for offer in spec.offers:
            quota = next((q for sku, q in region_quotas.items() if sku.casefold() == offer.sku.casefold()), None)
            offers.append(offer if quota is None else dataclasses.replace(offer, gpu_quota=quota))
        changes: dict[str, object] = {"name": region, "offers": tuple(offers), "rtt_ms": {}}
        if spot_preemptions_per_h is not None:
            changes["spot_preemptions_per_h"] = spot_preemptions_per_h
        if spot_notice_s is not None:
            changes["spot_notice_s"] = spot_notice_s
        specs.append(dataclasses.replace(spec, **changes))  # type: ignore[arg-type]
    return RegionCatalog(tuple(specs), base.skus)


def gpu_quotas(catalog: RegionCatalog) -> dict[tuple[str, str], int]:
    """(region, SKU) -> GPUs the cloud lets the fleet hold: what a policy that buys VMs may plan up to
    (`Observation.gpu_quotas`)."""
    return {(region.name, offer.sku): offer.gpu_quota for region in catalog.regions for offer in region.offers}


def parse_regions(text: str, source: str = "<regions>", skus: Catalog | None = None) -> RegionCatalog:
    """Parse the text of a regions file (top-level key `regions`: a list of entries)."""
    sku_catalog = skus if skus is not None else default_catalog()
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RegionCatalogError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("regions"), list) or not document["regions"]:
        raise RegionCatalogError(f"{source}: expected a top-level 'regions:' holding a non-empty list of entries")
    regions = [_region(raw, f"{source}: region {i}", sku_catalog) for i, raw in enumerate(document["regions"], 1)]
    names = {r.name for r in regions}
    if len({n.casefold() for n in names}) != len(regions):
        raise RegionCatalogError(f"{source}: duplicate region names (names are case-insensitive)")
    return RegionCatalog(tuple(_symmetric_rtts(regions, names, source)), sku_catalog)


_REGION_FIELDS = ("name", "provider", "provider_region", "spot_preemptions_per_h", "spot_notice_s", "shutdown_s",
                  "price_multiplier", "spot_price_multiplier", "rtt_ms", "skus")
_OFFER_FIELDS = ("name", "gpu_quota", "on_demand_provision_s", "spot_provision_s", "on_demand_usd_per_gpu_h",
                 "spot_usd_per_gpu_h")


def _region(raw: Any, where: str, skus: Catalog) -> RegionSpec:
    where = _labelled(raw, where)
    fields = _mapping(raw, where, _REGION_FIELDS)
    name = _text(fields, "name", where)
    offers_raw = fields.get("skus")
    if not isinstance(offers_raw, list) or not offers_raw:
        raise RegionCatalogError(f"{where}: field 'skus': expected a non-empty list of SKU offers, got {offers_raw!r}")
    offers = tuple(_offer(o, f"{where}: sku {i}", skus) for i, o in enumerate(offers_raw, 1))
    if len({o.sku for o in offers}) != len(offers):
        raise RegionCatalogError(f"{where}: field 'skus': a SKU is listed twice")
    rtt_raw = fields.get("rtt_ms", {})
    if not isinstance(rtt_raw, dict):
        raise RegionCatalogError(f"{where}: field 'rtt_ms': expected a mapping of region: milliseconds")
    rtt = {str(k): _number(rtt_raw, k, f"{where}: field 'rtt_ms'", positive=True) for k in rtt_raw}
    return RegionSpec(
        name=name, provider=_text(fields, "provider", where), provider_region=_text(fields, "provider_region", where),
        offers=offers,
        spot_preemptions_per_h=_number(fields, "spot_preemptions_per_h", where),
        spot_notice_s=_number(fields, "spot_notice_s", where),
        shutdown_s=_number(fields, "shutdown_s", where, default=60.0),
        price_multiplier=_number(fields, "price_multiplier", where, default=1.0, positive=True),
        spot_price_multiplier=_number(fields, "spot_price_multiplier", where, default=1.0, positive=True),
        rtt_ms=rtt,
    )


def _offer(raw: Any, where: str, skus: Catalog) -> SkuOffer:
    where = _labelled(raw, where)
    fields = _mapping(raw, where, _OFFER_FIELDS)
    name = _text(fields, "name", where)
    try:
        name = skus.sku(name).name  # the catalogue's spelling, so lookups agree everywhere
    except UnknownNameError as exc:
        raise RegionCatalogError(f"{where}: field 'name': {exc}") from None
    quota = fields.get("gpu_quota")
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
        raise RegionCatalogError(f"{where}: field 'gpu_quota': expected a whole number of GPUs >= 0, got {quota!r}")
    return SkuOffer(
        sku=name, gpu_quota=quota,
        on_demand_provision_s=_number(fields, "on_demand_provision_s", where),
        spot_provision_s=_number(fields, "spot_provision_s", where),
        on_demand_usd_per_gpu_h=_number(fields, "on_demand_usd_per_gpu_h", where, default=None, positive=True),
        spot_usd_per_gpu_h=_number(fields, "spot_usd_per_gpu_h", where, default=None, positive=True),
    )


def _symmetric_rtts(regions: list[RegionSpec], names: set[str], source: str) -> list[RegionSpec]:
    """Round trips are symmetric: a pair may be given on either side (or both, if they agree)."""
    pairs: dict[tuple[str, str], float] = {}
    for region in regions:
        for other, ms in region.rtt_ms.items():
            if other not in names:
                raise RegionCatalogError(f"{source}: region {region.name!r}: field 'rtt_ms': unknown region "
                                         f"{other!r}; known regions: {', '.join(sorted(names))}")
            if other == region.name:
                raise RegionCatalogError(f"{source}: region {region.name!r}: field 'rtt_ms': lists itself")
            key = (min(region.name, other), max(region.name, other))
            if key in pairs and pairs[key] != ms:
                raise RegionCatalogError(f"{source}: region {region.name!r}: field 'rtt_ms': {other!r} is "
                                         f"{ms} ms here but {pairs[key]} ms on the other side")
            pairs[key] = ms
    completed = []
    for region in regions:
        rtt = {b if a == region.name else a: ms for (a, b), ms in pairs.items() if region.name in (a, b)}
        completed.append(dataclasses.replace(region, rtt_ms=dict(sorted(rtt.items()))))
    return completed


def _labelled(raw: Any, where: str) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
        return f"{where} ({raw['name']!r})"
    return where


def _mapping(raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RegionCatalogError(f"{where}: expected a mapping of field: value, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if unknown:
        raise RegionCatalogError(f"{where}: field {unknown[0]!r} is not known (fields: {', '.join(allowed)})")
    return raw


def _text(fields: dict[str, Any], name: str, where: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RegionCatalogError(f"{where}: field {name!r}: expected a non-empty string, got {value!r}")
    return value


_REQUIRED = object()


def _number(fields: Mapping[Any, Any], name: Any, where: str, default: Any = _REQUIRED,
            positive: bool = False) -> Any:
    """A finite number >= 0 (> 0 when `positive`); `default` when absent, an error when required."""
    if name not in fields:
        if default is _REQUIRED:
            raise RegionCatalogError(f"{where}: field {name!r} is missing")
        return default
    value = fields[name]
    label = f"{where}: field {name!r}" if "field" not in where else f"{where}: {name!r}"
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
            float("inf"), float("-inf")):
        raise RegionCatalogError(f"{label}: expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise RegionCatalogError(f"{label}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)
