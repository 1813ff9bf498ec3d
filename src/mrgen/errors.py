"""The config error every layer raises for a bad setting (re-exported as ``mrgen.config.ConfigError``)."""


class ConfigError(ValueError):
    """A config value, key or preset is wrong; the message says how to fix it."""
