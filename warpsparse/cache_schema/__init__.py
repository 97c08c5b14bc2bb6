"""Schema of the persistent tuning cache (pydantic models, validated on load)."""
from warpsparse.cache_schema.models import (
    SCHEMA_VERSION,
    CacheDocument,
    CandidateResult,
    DeviceInfo,
    Entry,
    EntryKey,
    SignatureFields,
    Versions,
    Winner,
    best_of,
    candidate_ident,
)

__all__ = ["SCHEMA_VERSION", "CacheDocument", "CandidateResult", "DeviceInfo", "Entry", "EntryKey",
           "SignatureFields", "Versions", "Winner", "best_of", "candidate_ident"]
