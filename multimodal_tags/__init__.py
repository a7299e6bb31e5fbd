"""multimodal_tags: tag e-commerce products from their text and photos."""
__version__ = "0.1.0"
