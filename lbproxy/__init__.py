"""lbproxy: one HTTP endpoint in front of autoscaled GPU HTTP workers."""

__version__ = "0.1.0"
