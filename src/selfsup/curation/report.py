"""What ``curate`` found: duplicate groups, ranked outliers, and the report that holds them
(``curation.json`` is :meth:`CurationReport.as_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPORT_VERSION = 1


@dataclass
class Member:
    """A non-kept member of a duplicate group: ``kind`` exact or near; ``similarity``
    (cosine of the embeddings) and ``hash_bits`` (perceptual distance, None for blank
    images) are measured against the kept image."""

    path: str
    kind: str
    similarity: float
    hash_bits: int | None


@dataclass
class DuplicateGroup:
    """Images that are copies of each other: ``keep`` stays, ``members`` are flagged; ``id``
    counts from 1 in report order (near groups first, then by size)."""

    id: int
    keep: str
    members: list[Member]

    @property
    def kind(self) -> str:
        return "near" if any(m.kind == "near" for m in self.members) else "exact"


@dataclass
class Outlier:
    """One image's outlier scores (every readable image has one): ``severity`` >= 1 flags it
    unless ``outliers_top`` is given; ``reason`` names its largest score."""

    path: str
    rank: int
    severity: float
    z_embedding: float
    z_pixels: float
    knn_distance: float
    reason: str
    flagged: bool


@dataclass
class CurationReport:
    """Everything ``curate`` found; ``files`` are the outputs written, ``moved`` the files
    moved to quarantine (relative paths)."""

    data: str
    model: str
    images: int
    settings: dict[str, Any]
    groups: list[DuplicateGroup]
    outliers: list[Outlier]  # every readable image, ranked: most severe first
    unreadable: list[str]
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    moved: list[str] = field(default_factory=list)

    @property
    def flagged_duplicates(self) -> list[str]:
        return [m.path for g in self.groups for m in g.members]

    @property
    def flagged_outliers(self) -> list[str]:
        dups = set(self.flagged_duplicates)
        return [o.path for o in self.outliers if o.flagged and o.path not in dups]

    def summary(self) -> dict[str, Any]:
        exact = [m for g in self.groups for m in g.members if m.kind == "exact"]
        near = [m for g in self.groups for m in g.members if m.kind == "near"]
        return {
            "images": self.images,
            "unreadable": len(self.unreadable),
            "exact_duplicates": len(exact),
            "exact_groups": sum(1 for g in self.groups if g.kind == "exact"),
            "near_duplicates": len(near),
            "near_groups": sum(1 for g in self.groups if g.kind == "near"),
            "outliers": len(self.flagged_outliers),
            "moved": len(self.moved),
            "seconds": round(self.seconds, 2),
        }

    def as_dict(self, ranking: int = 100) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "data": self.data,
            "model": self.model,
            "settings": self.settings,
            "summary": self.summary(),
            "duplicate_groups": [
                {
                    "id": g.id,
                    "kind": g.kind,
                    "keep": g.keep,
                    "members": [m.__dict__ for m in g.members],
                }
                for g in self.groups
            ],
            "outliers": {
                "flagged": self.flagged_outliers,
                "ranking": [o.__dict__ for o in self.outliers[: max(ranking, 1)]],
            },
            "unreadable": self.unreadable,
            "files": self.files,
            "moved": self.moved,
        }
