"""Exceptions with messages meant for users: the CLI prints them as one line, exit code 2."""


class GradguardError(Exception):
    """Base class for every error gradguard raises on purpose."""


class ConfigError(GradguardError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the rule."""


class DatasetNotFoundError(GradguardError, FileNotFoundError):
    """A dataset's files are not where gradguard looked; the message says where and how to get them."""


class DatasetFormatError(GradguardError, ValueError):
    """A dataset file exists but does not follow the documented format."""
