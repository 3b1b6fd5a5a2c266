"""Errors with exit codes.

Every failure kiln reports is a :class:`KilnError` subclass. Its ``exit_code`` tells a caller
(a person, a CI retry rule) what kind of failure it was without parsing text:

====  ==========================================================
 2    bad input or configuration (fix the input; retry is useless)
 3    registry authentication / authorisation (ask for access)
 4    transient registry failure (worth a retry), and a registry answer that cannot be right
      (bytes not matching their digest, an answer beyond kiln's limits): not retried at once,
      but a rerun after the registry or the proxy in front of it is fixed can succeed
 5    build failure (a build step failed)
 6    a required host tool is missing or not set up (install it)
====  ==========================================================
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of all kiln errors; ``str(err)`` is the full message for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(KilnError):
    """Invalid settings, environment values or configuration files."""

    exit_code = 2


class InputError(KilnError):
    """Invalid user input: unknown image, bad architecture, invalid reference."""

    exit_code = 2


class PreprocessError(InputError):
    """A build file could not be preprocessed (file:line in the message)."""


class RegistryAuthError(KilnError):
    """The registry refused our credentials or our access (401/403)."""

    exit_code = 3


class RegistryError(KilnError):
    """A registry answered with a non-transient error (4xx other than auth)."""

    exit_code = 2


class RegistryTransientError(KilnError):
    """The registry could not be reached or kept failing with 5xx/429: worth a retry."""

    exit_code = 4


class RegistryIntegrityError(KilnError):
    """The registry's answer cannot be right: bytes that do not match their digest, an answer
    larger than kiln's limit for it, a tag list whose pages loop. Retrying the same registry at
    once gives the same bytes, so kiln does not; the exit code is the transient one (4)."""

    exit_code = 4


class BuildError(KilnError):
    """A build step failed."""

    exit_code = 5


class ToolMissingError(KilnError):
    """A host tool (buildah, skopeo, docker-registry, qemu) is missing or not set up."""

    exit_code = 6
