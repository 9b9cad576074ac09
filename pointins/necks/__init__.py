from pointins.necks.fpn import FPN

__all__ = ["FPN"]
