"""mrgen: a controllable data engine for MRI segmentation on unannotated modalities."""

__version__ = "0.1.0"
