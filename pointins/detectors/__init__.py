from pointins.detectors.dense_detector import FCOS, DenseDetector, RetinaNet

__all__ = ["DenseDetector", "FCOS", "RetinaNet"]
