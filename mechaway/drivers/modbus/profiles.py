"""Device profiles: a device's register map as a data file, instead of thirty read lines.

A profile is a TOML file in ``mechaway/drivers/modbus/profiles/`` named after the profile
(``eastron-sdm630.toml``)::

    description = "Eastron SDM630: 3-phase energy meter"
    source = "where the register map comes from (manual, version)"
    max_registers = 80          # the device's own limit per request (Modbus allows 125)
    max_gap = 4                 # registers a merged request may read between two values

    [defaults]                  # applied to every read that does not say otherwise
    table = "input"
    type = "float32"

    [[reads]]
    name = "voltage_l1"
    address = 0x0000            # the PDU address (register 30001 is input address 0)

Every read is checked like a node's own reads (``ReadSpec``), names must be unique, and a
profile must fit the protocol: a bad file is a ``ProfileError`` naming the file and key.
"""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mechaway.drivers.modbus.decode import MAX_REGISTERS, ReadSpec, plan
from mechaway.errors import ConfigError, located

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ProfileError(ConfigError):
    """A profile that does not exist or does not validate."""


class Profile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A device's register map (see the module docstring)."""

    description: Annotated[str, msgspec.Meta(min_length=1, description="the device")]
    source: Annotated[
        str, msgspec.Meta(min_length=1, description="where the register map comes from")
    ]
    reads: Annotated[
        list[ReadSpec], msgspec.Meta(min_length=1, description="the values to read")
    ]
    max_registers: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_REGISTERS,
                     description="registers per request the device accepts"),
    ] = MAX_REGISTERS  # fmt: skip
    max_gap: Annotated[
        int,
        msgspec.Meta(ge=0, le=MAX_REGISTERS,
                     description="unread registers a merged request may span"),
    ] = 0  # fmt: skip
    name: str = ""

    def __post_init__(self) -> None:
        plan(self.reads, max_gap=self.max_gap, max_registers=self.max_registers)


#: the shipped profiles (package data beside this module; pathlib, not importlib.resources,
#: whose import brings tempfile, shutil, bz2 and lzma: ~2 MB of a Pi's RSS for nothing)
_PROFILES = Path(__file__).resolve().parent / "profiles"


def available() -> list[str]:
    """Names of the profiles shipped with mechaway."""
    root = _PROFILES
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


@functools.cache
def load(name: str) -> Profile:
    """The profile ``name`` (cached); ``ProfileError`` for an unknown or invalid one."""
    if not NAME_RE.match(name):
        raise ProfileError(f"profile {name!r}: not a profile name")
    root = _PROFILES
    path = root / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r} (known: {', '.join(available())})")
    return parse(path.read_text(encoding="utf-8"), name, where=f"profiles/{name}.toml")


def parse(text: str, name: str, *, where: str = "profile") -> Profile:
    """Validate a profile's TOML text; errors name ``where`` and the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{where}: {err}") from None
    defaults = raw.pop("defaults", {})
    if not isinstance(defaults, dict):
        raise ProfileError(f"{where}: defaults: expected a table")
    reads = raw.get("reads")
    if isinstance(reads, list):
        raw["reads"] = [
            {**defaults, **r} if isinstance(r, dict) else r for r in reads
        ]
    raw["name"] = name
    try:
        return msgspec.convert(raw, Profile)
    except msgspec.ValidationError as err:
        raise ProfileError(f"{where}: {located(err)}") from None


def reads_of(name: str) -> list[ReadSpec]:
    """The reads of profile ``name``."""
    return list(load(name).reads)


def describe(name: str) -> dict[str, Any]:
    """JSON-ready summary of a profile (for docs and the API)."""
    p = load(name)
    return {
        "name": name,
        "description": p.description,
        "source": p.source,
        "max_registers": p.max_registers,
        "reads": [r.name for r in p.reads],
    }
