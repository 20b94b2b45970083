"""A stateful Kubernetes API server emulator that the real ``kubernetes.aio`` client talks to over loopback HTTP."""
