"""pnca_utils: the small library behind pnca-book (ProxyNCA, ProxyNCA++, HDML).

The science (`losses`, `metrics`, `samplers`, `models`, `data`, `hdml`), training (`step`,
`training`), experiments (`experiments/`) and what the chapters compute and draw (`analysis/`,
`plots/`): pnca_utils/README.md maps every module to the chapter that teaches it.
"""

__version__ = "0.1.0"
