"""mobileclip-repro: reproduce MobileCLIP's DataCompDR learning-efficiency results."""

__version__ = "0.1.0"
