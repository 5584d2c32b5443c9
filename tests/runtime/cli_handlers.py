"""Handlers for the command-line tests: deliberately empty, so every job name is unknown."""

from atomicqueues import Registry

registry = Registry()
