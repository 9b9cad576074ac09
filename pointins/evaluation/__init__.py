"""Evaluators: COCO box/mask AP through pycocotools, Cityscapes mask AP through
cityscapesscripts. Both are built by the datamodule (``build_evaluator``)."""

from pointins.evaluation.cityscapes import CityscapesEvaluator, CityscapesImage
from pointins.evaluation.coco import CocoEvaluator, encode_masks, save_metrics, summarize_ap

__all__ = [
    "CityscapesEvaluator",
    "CityscapesImage",
    "CocoEvaluator",
    "encode_masks",
    "save_metrics",
    "summarize_ap",
]
