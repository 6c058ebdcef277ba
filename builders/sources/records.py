"""What every source format hands to the ingest runner: one `Record` per usable image (labels and
boxes in source pixels), one `Skip` per record it could not use, and the `Source` it came from
(kind, name and licence). Ids are pseudonymized here, the same way for every source."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from mammosynth.builders.core.prepared import SourceLicence

DEFAULT_PSEUDONYM_KEY = "mammosynth-pseudonym-v1"
PSEUDONYM_KEY_ENV = "MAMMOSYNTH_PSEUDONYM_KEY"


def pseudonym_key() -> str:
    """The key in effect: `MAMMOSYNTH_PSEUDONYM_KEY` when set, else the public default."""
    return os.environ.get(PSEUDONYM_KEY_ENV, DEFAULT_PSEUDONYM_KEY)


def pseudonymize(value: str, key: str | None = None) -> str:
    """Keyed hash (HMAC-SHA256, 32 hex): stable for one key, unlinkable to the source id without it.

    The key comes from `MAMMOSYNTH_PSEUDONYM_KEY` when set; keep it private for real data."""
    key = key if key is not None else pseudonym_key()
    return hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:32]


_DIGEST_SALT = b"mammosynth pseudonym key digest v1"
_DIGEST_ROUNDS = 100_000  # slow on purpose: the digest is stored, a short key must not be guessable from it


def pseudonym_key_digest(key: str | None = None) -> str:
    """A digest of the key in effect (never the key itself) that joins the ingest fingerprint and
    the resume cache, so a run under another key neither reuses nor mixes ids made under this one."""
    key = key if key is not None else pseudonym_key()
    return hashlib.pbkdf2_hmac("sha256", key.encode(), _DIGEST_SALT, _DIGEST_ROUNDS).hex()[:32]


@dataclass(frozen=True)
class Source:
    """A source as the runner sees it."""

    kind: str  # "vindr" | "dicom": ingest.json's source kind, part of the fingerprint
    name: str  # the rows' `source` column and the key of ingest.json's `sources` (e.g. "CBIS-DDSM")
    licence: SourceLicence  # recorded in ingest.json unless the options declare another
    index_files: tuple[str, ...] = ()  # files in the source folder whose bytes join the fingerprint


@dataclass
class Finding:
    bbox: tuple[float, float, float, float]  # source pixels
    categories: list[str]
    finding_birads: int | None


@dataclass
class Record:
    key: str  # source record id (image id), unique per source
    path: str
    study_id: str
    laterality: str | None
    view: str | None
    birads: int
    density: str | None
    split: str
    manufacturer: str | None = None
    model_name: str | None = None
    expect_size: tuple[int, int] | None = None  # (height, width) the CSV claims
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Skip:
    record: str
    file: str
    field: str
    reason: str


class SkipRecord(Exception):
    """One record cannot be used: ``field`` names the column or DICOM attribute at fault."""

    def __init__(self, field_: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field_
        self.reason = reason


__all__ = [
    "Source",
    "Record",
    "Finding",
    "Skip",
    "SkipRecord",
    "pseudonymize",
    "pseudonym_key",
    "pseudonym_key_digest",
    "DEFAULT_PSEUDONYM_KEY",
    "PSEUDONYM_KEY_ENV",
]
