"""netd: overlay networking and service-chaining daemon for container clusters."""

__version__ = "0.1.0"
