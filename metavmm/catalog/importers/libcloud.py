"""Apache Libcloud's ``pricing.json``: hourly USD prices per driver, size and region.

The file's ``compute`` section holds one table per Libcloud driver. Three layouts occur:
``{size: {region: price}}`` (``ec2_linux``, ``azure_linux``...), ``{size: price}`` for drivers without
regions (``rackspace``, ``gogrid``...), and GCE's ``{family: {cpu|ram: {on_demand: {region:
{price, sku}}}}}``, per-core and per-GiB prices that become ``vcpu-hour`` / ``gib-hour`` component
prices. The file's ``updated`` timestamp is every price's effective date. Libcloud writes 0 where a
size is not offered in a region; those are skipped, as are low-priority (spot) sizes, preemptible
and committed-use GCE prices, and the legacy per-region EC2 tables that ``ec2_linux`` supersedes.
Shapes come from an instance-type table (:mod:`.shapes`), e.g. Libcloud's ``ec2_instance_types.json``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from metavmm.catalog.importers.base import ImportResult, JsonPlace, load_json
from metavmm.catalog.importers.shapes import ShapeTable
from metavmm.foundation.prices import PriceFileError, PriceRecord, PriceUnit, check_records, parse_amount

# driver table -> (provider kind, operating system / licence)
DRIVERS = {
    "ec2_linux": ("aws", "linux"), "ec2_windows": ("aws", "windows"), "ec2_rhel": ("aws", "rhel"),
    "ec2_rhel_ha": ("aws", "rhel-ha"), "ec2_suse": ("aws", "suse"),
    "azure_linux": ("azure", "linux"), "azure_windows": ("azure", "windows"),
    "gce_instances": ("gcp", "linux"),
}
_LEGACY_EC2 = re.compile(r"^ec2_(us|eu|ap|sa|ca)_")
_NOT_INSTANCES = {"gce_images": "licence prices (per image, not per instance)", "gce_disks": "disk prices"}


def driver_kind(driver: str) -> tuple[str, str]:
    """(provider kind, os) of a Libcloud driver table; other drivers keep their own name as kind."""
    return DRIVERS.get(driver, (driver[:32], "linux"))


def parse(text: str, source: str, shapes: ShapeTable | None = None, kind: str | None = None,
          drivers: set[str] | None = None) -> ImportResult:
    """Records of every (or the selected) driver table; ``kind`` keeps only one provider kind's tables."""
    data = load_json(text, source)
    place = JsonPlace(text, source)
    if not isinstance(data, dict) or not isinstance(data.get("compute"), dict):
        raise PriceFileError([f"{source}:1: not a Libcloud pricing file: no 'compute' object"])
    updated = data.get("updated")
    if isinstance(updated, bool) or not isinstance(updated, int | float):
        raise PriceFileError([f"{place.at('updated')}: 'updated' must be a UNIX timestamp, got {updated!r}"])
    effective = datetime.fromtimestamp(updated, UTC).date()
    label = f"libcloud {source.rsplit('/', 1)[-1]} (updated {effective})"
    result = ImportResult()
    problems: list[str] = []
    records: list[PriceRecord] = []
    for driver, table in data["compute"].items():
        dkind, os_name = driver_kind(driver)
        if (kind and dkind != kind) or (drivers and driver not in drivers):
            continue
        if driver in _NOT_INSTANCES or _LEGACY_EC2.match(driver):
            result.skip(_NOT_INSTANCES.get(driver, "legacy per-region EC2 table (ec2_linux supersedes it)"))
            continue
        if not isinstance(table, dict):
            problems.append(f"{place.at('compute', driver)}: {driver}: expected an object of sizes")
            continue
        common = {"provider_kind": dkind, "os": os_name, "source": label, "effective_date": effective}
        if driver == "gce_instances":
            _gce(table, common, records, result, problems, place)
        else:
            _sizes(driver, table, common, shapes, records, result, problems, place)
    return ImportResult(records=check_records(records, problems, locate=place), skipped=result.skipped)


def _price(value: Any, where: tuple[str | int, ...], place: JsonPlace, problems: list[str]) -> Any:
    try:
        return parse_amount(value)
    except ValueError as exc:
        problems.append(f"{place.at(*where)}: {exc}")
        return None


def _sizes(driver: str, table: dict[str, Any], common: dict[str, Any], shapes: ShapeTable | None,
           records: list[PriceRecord], result: ImportResult, problems: list[str], place: JsonPlace) -> None:
    for size, prices in table.items():
        if size.startswith("lowpriority"):
            result.skip("low-priority (spot) size")
            continue
        shape = shapes.get(size) if shapes and shapes.applies_to(common["provider_kind"]) else None
        regional = prices.items() if isinstance(prices, dict) else [("default", prices)]
        for region, value in regional:
            path = ("compute", driver, size, region) if isinstance(prices, dict) else ("compute", driver, size)
            amount = _price(value, path, place, problems)
            if amount is None:
                continue
            if amount == 0:
                result.skip("zero price (not offered in the region)")
                continue
            records.append(PriceRecord(region=region, flavor=size, amount=amount, currency="USD", shape=shape,
                                       family=shapes.family(size) if shapes else None,
                                       where=f"{place.source} {'/'.join(path)}", path=path, **common))


def _gce(table: dict[str, Any], common: dict[str, Any], records: list[PriceRecord], result: ImportResult,
         problems: list[str], place: JsonPlace) -> None:
    for family, parts in table.items():
        if not isinstance(parts, dict):
            problems.append(f"{place.at('compute', 'gce_instances', family)}: {family}: expected cpu/ram prices")
            continue
        fam = family.replace("_", "-")
        has_ram = "ram" in parts
        for part, unit in (("cpu", PriceUnit.VCPU_HOUR), ("ram", PriceUnit.GIB_HOUR)):
            on_demand = (parts.get(part) or {}).get("on_demand") or {}
            for region, entry in on_demand.items():
                path = ("compute", "gce_instances", family, part, "on_demand", region)
                value = entry.get("price") if isinstance(entry, dict) else entry
                amount = _price(value, path, place, problems)
                if amount is None or amount == 0:
                    continue
                # Shared-core families (f1, g1) have one per-instance price and no RAM price.
                this_unit = unit if has_ram else PriceUnit.HOUR
                sku = entry.get("sku", "") if isinstance(entry, dict) else ""
                records.append(PriceRecord(
                    region=region, flavor=fam if has_ram else f"{fam}-shared", amount=amount, currency="USD",
                    unit=this_unit, family=fam if has_ram else None,
                    where=f"{place.source} {'/'.join(path)}" + (f" (SKU {sku})" if sku else ""), path=path,
                    **common))
        for skipped in set(parts) - {"cpu", "ram"}:
            result.skip(f"GCE {skipped} prices")
