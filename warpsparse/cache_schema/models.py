"""Pydantic models of the persistent tuning cache (a versioned, human-readable JSON document)."""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Final, Literal, Optional

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

SCHEMA_VERSION: Final = 3  # 2 added CandidateResult.setup_ms, 3 Versions.sources; older files are still read

Triple = tuple[int, int, int]
Status = Literal["ok", "failed", "pruned", "skipped"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignatureFields(_Frozen):
    """The bucketed call signature: what must match for a tuning result to be reused."""

    op: str
    n_in_bucket: int = Field(description="half-octave bucket of N_in: floor(2*log2(N_in)), -1 for 0")
    n_out_bucket: int = Field(description="half-octave bucket of N_out")
    c_in: int
    c_out: int
    kernel_size: Triple
    kind: str
    stride: Triple
    dtype: str
    tf32: bool
    density_bucket: int = Field(description="half-octave bucket of pairs / N_out (mean neighbours per output)")


class DeviceInfo(_Frozen):
    """What the results were measured on: a GPU model, or a CPU model with a thread count."""

    type: Literal["cuda", "cpu"]
    name: str
    capability: Optional[str] = None
    sm_count: Optional[int] = None
    threads: Optional[int] = None


class Versions(_Frozen):
    """Software versions the results were measured with."""

    warpsparse: str
    torch: str
    triton: Optional[str] = None
    cupy: Optional[str] = None
    cuda: Optional[str] = None
    sources: Optional[str] = None  # digest of the algorithms' sources: an edited checkout tunes afresh


class CandidateResult(_Frozen):
    """One (algorithm, parameters) point: its median time, or why it has none."""

    algorithm: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    status: Status
    median_ms: Optional[float] = None
    error: Optional[str] = None
    setup_ms: float = 0.0  # host time a fresh kernel map adds (layouts only this point needs)

    @property
    def score_ms(self) -> float:
        """What the tuner minimises: the measured time plus the per-map setup (``inf`` without a time)."""
        return math.inf if self.median_ms is None else self.median_ms + self.setup_ms

    @model_validator(mode="after")
    def _consistent(self) -> "CandidateResult":
        if (self.status == "ok") != (self.median_ms is not None):
            raise ValueError(f"status {self.status!r} and median_ms {self.median_ms!r} disagree")
        return self

    @property
    def ident(self) -> str:
        """``algorithm`` plus canonical parameters: identifies the point within an entry."""
        return candidate_ident(self.algorithm, self.params)


class Winner(_Frozen):
    algorithm: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    median_ms: float


class EntryKey(_Frozen):
    """Identity of an entry: signature, device and versions."""

    signature: SignatureFields
    device: DeviceInfo
    versions: Versions

    @property
    def ident(self) -> str:
        """Stable short id (12 hex digits) of this key; a key without a sources digest (as written before schema
        3) keeps the id it had."""
        unset = {"versions": {"sources"}} if self.versions.sources is None else None
        blob = json.dumps(self.model_dump(mode="json", exclude=unset), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class Entry(_Frozen):
    """Everything measured for one key, the fastest correct candidate and when it was last tuned."""

    id: str
    key: EntryKey
    candidates: list[CandidateResult]
    winner: Optional[Winner]
    tuned_at: AwareDatetime

    @model_validator(mode="after")
    def _check(self) -> "Entry":
        if self.id != self.key.ident:
            raise ValueError(f"entry id {self.id!r} does not match its key (expected {self.key.ident!r})")
        if self.winner != best_of(self.candidates):
            raise ValueError(f"entry {self.id}: winner is not the fastest ok candidate")
        return self

    @staticmethod
    def build(key: EntryKey, candidates: list[CandidateResult], tuned_at: datetime) -> "Entry":
        """An entry whose id and winner are derived from ``key`` and ``candidates``."""
        ordered = sorted(candidates, key=lambda c: c.ident)
        return Entry(id=key.ident, key=key, candidates=ordered, winner=best_of(ordered), tuned_at=tuned_at)


class CacheDocument(BaseModel):
    """The whole cache file."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    entries: list[Entry] = Field(default_factory=list)


def candidate_ident(algorithm: str, params: dict[str, JsonValue]) -> str:
    return algorithm + json.dumps(params, sort_keys=True, separators=(",", ":"))


def best_of(candidates: list[CandidateResult]) -> Winner | None:
    """The ``ok`` candidate of the lowest score (ties broken by identity, so the choice is deterministic)."""
    ok = [(c, c.median_ms) for c in candidates if c.status == "ok" and c.median_ms is not None]
    if not ok:
        return None
    best, median_ms = min(ok, key=lambda item: (item[0].score_ms, item[0].ident))
    return Winner(algorithm=best.algorithm, params=best.params, median_ms=median_ms)
