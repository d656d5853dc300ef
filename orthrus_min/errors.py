"""The one exception type that orthrus_min raises for bad input.

Every message is a single line that names what was wrong (a config field, a
tensor, a file, a flag) so the command line can print it without a traceback.
"""


class OrthrusError(ValueError):
    """Bad input: a checkpoint, config, prompt or generation setting we cannot use."""
