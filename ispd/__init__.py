"""ispd: the core network services of a small ISP in one daemon."""

__version__ = "0.1.0"
