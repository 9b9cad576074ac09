from pointins.detectors.dense_detector import DenseDetector
from pointins.detectors.heads import DenseHead

__all__ = ["DenseDetector", "DenseHead"]
