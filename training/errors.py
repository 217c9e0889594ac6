"""Errors a user can cause: caught at the boundary (CLI, app, worker) and shown as one clear sentence."""


class UserError(Exception):
    """A bad input from the user; the message says what is wrong and what to do."""
