"""The base of every closed set of names the config chooses from (`stage=`, `method.name=`, ...)."""

from enum import Enum


class Choice(str, Enum):
    """A config choice that reads as its plain value in interpolations, paths and logs."""

    def __str__(self) -> str:
        return self.value
