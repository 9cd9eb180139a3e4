"""Published numbers the book compares with, in percent. A value a paper does not give is absent.

ProxyNCA++: Teh, DeVries, Taylor, "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood
Component Analysis", ECCV 2020 (arXiv 2004.01113), ResNet-50 pretrained on ImageNet.
HDML: Zheng, Chen, Lu, Zhou, "Hardness-Aware Deep Metric Learning", CVPR 2019, GoogLeNet.
"""
from __future__ import annotations

# PROXYNCA_PP[(dataset, embedding dim)] = {metric: value}
PROXYNCA_PP: dict[tuple[str, int], dict[str, float]] = {
    ("cub", 2048): {"R@1": 72.2, "R@2": 82.0, "R@4": 89.2, "R@8": 93.5},
    ("cars", 2048): {"R@1": 90.1, "R@2": 94.5, "R@4": 97.0, "R@8": 98.4},
    ("cub", 512): {"R@1": 69.0, "R@2": 79.8, "R@4": 87.3},
    ("cars", 512): {"R@1": 86.5, "R@2": 92.5, "R@4": 95.7},
    ("sop", 2048): {"R@1": 81.4},
    ("sop", 512): {"R@1": 80.7, "R@10": 92.0, "R@100": 96.7},
    ("inshop", 2048): {"R@1": 90.9},
    ("inshop", 512): {"R@1": 90.4, "R@10": 98.1, "R@20": 98.8},
}

# Change of R@1 (points) the paper reports for a component, in the words of its ablation text.
# Removing low temperature scaling: the largest drop. All enhancements together against the
# original ProxyNCA: the average gain over the four data sets (so the removal is its negative).
ABLATION_DELTA_R1: dict[str, tuple[float, str]] = {
    "low temperature": (-10.8, "removing low temperature scaling"),
    "all": (-22.9, "original ProxyNCA vs ProxyNCA++, mean over CUB, Cars, SOP and InShop"),
}

# HDML[(dataset, method)] = {metric: value}; methods: triplet, hdml-triplet, npair, hdml-npair
HDML: dict[tuple[str, str], dict[str, float]] = {
    ("cub", "triplet"): {"NMI": 49.8, "F1": 15.0, "R@1": 35.9, "R@2": 47.7, "R@4": 59.1, "R@8": 70.0},
    ("cub", "hdml-triplet"): {"NMI": 55.1, "F1": 21.9, "R@1": 43.6, "R@2": 55.8, "R@4": 67.7, "R@8": 78.3},
    ("cub", "npair"): {"NMI": 60.2, "F1": 28.2, "R@1": 51.9, "R@2": 64.3, "R@4": 74.9, "R@8": 83.2},
    ("cub", "hdml-npair"): {"NMI": 62.6, "F1": 31.6, "R@1": 53.7, "R@2": 65.7, "R@4": 76.7, "R@8": 85.7},
    ("cars", "npair"): {"R@1": 68.9},
    ("cars", "hdml-npair"): {"R@1": 79.1},
    ("sop", "npair"): {"R@1": 66.4},
    ("sop", "hdml-npair"): {"R@1": 68.7},
}
