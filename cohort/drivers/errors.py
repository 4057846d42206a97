"""Errors drivers raise so the reconciler can tell retryable faults from final ones."""


class DriverError(Exception):
    """A driver call failed; the reconciler retries it later."""


class PermanentDriverError(DriverError):
    """A driver call failed in a way retrying cannot fix (bad config, bad input).

    The object goes to ERROR with this message as its reason.
    """
