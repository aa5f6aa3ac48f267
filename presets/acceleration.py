"""Typed, read-only view of `acceleration.toml`: the acceleration profiles and their settings.

`pipelines.models.acceleration` applies a profile to a transformer and `pipelines.models.residency` picks
where the models live; both read these objects, so a threshold changed in the TOML file
changes everywhere at once.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

ACCELERATION_FILE = Path(__file__).with_name("acceleration.toml")

PROFILES = ("none", "regular", "high")
CACHE_KINDS = ("off", "first_block", "taylorseer")
RESIDENCY_POLICIES = ("auto", "resident", "swap", "offload")
# Environment variables the server reads (each has a command-line flag too).
PROFILE_ENV = "FLUX_ACCELERATION"  # none | regular | high
RESIDENCY_ENV = "FLUX_RESIDENCY"  # auto | resident | swap | offload
COMPILE_CACHE_ENV = "FLUX_COMPILE_CACHE"  # folder for compiled artifacts
GiB = 2**30


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    compile: bool
    attention: str  # "default" or "best"
    fuse_qkv: bool
    float8: bool
    cache: str  # the default for requests: one of CACHE_KINDS


@dataclass(frozen=True)
class FirstBlockCache:
    threshold: float
    threshold_float8: float  # float8 residuals differ more from step to step


@dataclass(frozen=True)
class TaylorSeerCache:
    cache_interval: int
    disable_cache_before_step: int
    max_order: int


@dataclass(frozen=True)
class CompileSettings:
    fullgraph: bool
    recompile_limit: int
    cache_dir: str
    warmup_sizes: tuple[tuple[int, int], ...]
    warmup_steps: int


@dataclass(frozen=True)
class Acceleration:
    default: str
    profiles: Mapping[str, Profile]
    attention_cuda: tuple[str, ...]
    attention_other: tuple[str, ...]
    float8_min_capability: tuple[int, int]
    float8_row_scales_from: tuple[int, int]
    first_block: FirstBlockCache
    taylorseer: TaylorSeerCache
    compile: CompileSettings

    def profile(self, name: str | None = None) -> Profile:
        """A profile by name ("" or None: the default)."""
        name = (name or self.default).strip().lower()
        if name not in self.profiles:
            raise ValueError(f"acceleration must be one of {', '.join(PROFILES)}, got {name!r}")
        return self.profiles[name]


def compile_cache_dir(override: str | os.PathLike | None = None, settings: Acceleration | None = None,
                      env: Mapping[str, str] = os.environ) -> Path:
    """Where compiled artifacts live: the override (a flag), else $FLUX_COMPILE_CACHE, else the TOML's."""
    settings = settings or ACCELERATION
    return Path(override or env.get(COMPILE_CACHE_ENV) or settings.compile.cache_dir).expanduser()


def _profile(name: str, spec: dict) -> Profile:
    profile = Profile(name=name, **spec)
    if profile.cache not in CACHE_KINDS:
        raise ValueError(f"profile {name}: cache must be one of {CACHE_KINDS}, got {profile.cache!r}")
    if profile.attention not in ("default", "best"):
        raise ValueError(f"profile {name}: attention must be 'default' or 'best', got {profile.attention!r}")
    return profile


def load_acceleration(path: Path = ACCELERATION_FILE) -> Acceleration:
    data = tomllib.loads(path.read_text())
    profiles = {name: _profile(name, spec) for name, spec in data["profiles"].items()}
    if tuple(profiles) != PROFILES:
        raise ValueError(f"{path}: [profiles] must list exactly {PROFILES}")
    if data["default"] not in profiles:
        raise ValueError(f"{path}: default must be one of {PROFILES}")
    compile_ = data["compile"]
    return Acceleration(
        default=data["default"],
        profiles=MappingProxyType(profiles),
        attention_cuda=tuple(data["attention"]["cuda"]),
        attention_other=tuple(data["attention"]["other"]),
        float8_min_capability=tuple(data["float8"]["min_compute_capability"]),
        float8_row_scales_from=tuple(data["float8"]["row_scales_from"]),
        first_block=FirstBlockCache(**data["cache"]["first_block"]),
        taylorseer=TaylorSeerCache(**data["cache"]["taylorseer"]),
        compile=CompileSettings(
            fullgraph=compile_["fullgraph"], recompile_limit=compile_["recompile_limit"],
            cache_dir=compile_["cache_dir"], warmup_steps=compile_["warmup_steps"],
            warmup_sizes=tuple((int(w), int(h)) for w, h in compile_["warmup_sizes"]),
        ),
    )


ACCELERATION = load_acceleration()
