"""maskdcpt: masked degradation-classification pre-training for universal image restoration."""
__version__ = "0.1.0"
