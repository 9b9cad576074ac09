"""Evaluators: COCO box/mask AP through pycocotools."""

from pointins.evaluation.coco import CocoEvaluator, encode_masks, save_metrics, summarize_ap

__all__ = ["CocoEvaluator", "encode_masks", "save_metrics", "summarize_ap"]
