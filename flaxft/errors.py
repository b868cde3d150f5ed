"""User-facing errors: one line saying what is wrong and what to do."""


class FlaxftError(Exception):
    """A problem with the user's input (config, files, data, environment).

    The CLI prints its message as a single line (no traceback unless --debug) and exits non-zero.
    Messages say what is wrong and how to fix it, e.g.
    ``FlaxftError("data.path: folder '/x/MRPC' does not exist; point data.path at a GLUE task folder")``.
    """
