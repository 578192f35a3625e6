"""depositwatch: follow Bitcoin and EVM chains, alert on funds sent to or swept from revoked addresses."""

__version__ = "0.1.0"
__all__ = ["__version__"]
