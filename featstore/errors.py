"""One exception type for every user-facing failure.

The CLI prints ``str(err)`` as a single line and exits with status 2, so a message must name the
input that is wrong and say how to fix it, e.g.::

    raise FeatstoreError(f"store {url!r} does not exist; create it with `featstore init {url}`")
"""


class FeatstoreError(Exception):
    """A failure caused by the user's input or data, reported as one line without a traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class CorruptDataError(FeatstoreError):
    """Stored bytes do not match their checksum (or cannot be decoded)."""
