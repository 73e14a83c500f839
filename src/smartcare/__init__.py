"""SmartCare: regional smart-healthcare platform (区域智慧就医平台)."""

__version__ = "0.1.0"
