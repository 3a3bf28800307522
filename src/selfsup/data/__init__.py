"""Data: image sources (folders, named sets), reproducible samplers, view datasets."""

from selfsup.data.loader import (
    EpochSampler,
    EvalDataset,
    ImageDataset,
    ViewDataset,
    collate_canvas,
    collate_views,
    default_workers,
    loader_kwargs,
    sample_seed,
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
    "ImageDataset",
    "ImageSource",
    "SubsetSource",
    "ViewDataset",
    "auto_image_size",
    "collate_canvas",
    "collate_views",
    "default_workers",
    "loader_kwargs",
    "open_source",
    "sample_seed",
    "scan_folder",
    "sniff_image_size",
    "stratified_split",
    "subset",
]
