"""Errors a user can fix. The CLI prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """A problem in the input (config, data, checkpoint) with a message that names it and the fix."""


class ConfigError(UserError):
    """An experiment configuration that cannot be used: unknown key, wrong type, bad value, missing file."""
