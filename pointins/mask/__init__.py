from pointins.mask.instance_aware_mask import InstanceAwareMask

__all__ = ["InstanceAwareMask"]
