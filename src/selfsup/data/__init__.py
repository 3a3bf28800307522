"""Data: image sources (folders, named sets), reproducible samplers, view datasets."""

from selfsup.data.loader import (
    EpochSampler,
    EvalDataset,
    ViewDataset,
    collate_views,
    default_workers,
    loader_kwargs,
)
from selfsup.data.sources import (
    NAMED_SETS,
    DataError,
    FolderSource,
    ImageSource,
    SubsetSource,
    auto_image_size,
    open_source,
    scan_folder,
    sniff_image_size,
    stratified_split,
    subset,
)

__all__ = [
    "NAMED_SETS",
    "DataError",
    "EpochSampler",
    "EvalDataset",
    "FolderSource",
    "ImageSource",
    "SubsetSource",
    "ViewDataset",
    "auto_image_size",
    "collate_views",
    "default_workers",
    "loader_kwargs",
    "open_source",
    "scan_folder",
    "sniff_image_size",
    "stratified_split",
    "subset",
]
