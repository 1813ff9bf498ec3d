"""The one error class of curation (kept apart so every curate module can raise it without import cycles)."""


class CurateError(ValueError):
    """Bad curate input (manifest or image); the message names the file and the fix."""
