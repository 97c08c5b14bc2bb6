"""Coordinates: key packing, kernel maps and the builders that make them."""
from warpsparse.coords.kernel_map import KernelMap, PairList

__all__ = ["KernelMap", "PairList"]
