"""pnca_utils: the small library behind pnca-book (ProxyNCA, ProxyNCA++, HDML)."""

__version__ = "0.1.0"
