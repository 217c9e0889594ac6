"""People as the app tells them apart (submitter ids) and as it names them in text (never an internal id)."""

from __future__ import annotations

VISITOR, ADDRESS = "visitor-", "address-"  # submitter ids of people without a login: a browser, an API client


def person(submitter: str | None, viewer: str | None = None) -> str:
    """A submitter as the viewer reads it: 'you', a login name, or 'another visitor' (never an internal id)."""
    if viewer is not None and submitter == viewer:
        return "you"
    if not submitter or submitter.startswith((VISITOR, ADDRESS, "session-")):
        return "another visitor"
    return submitter


def reason(text: str | None, submitter: str | None, viewer: str | None = None) -> str:
    """A job's reason ('cancelled by visitor-9f13...') with the submitter's id put as the viewer reads it."""
    text = text or ""
    return text.replace(submitter, person(submitter, viewer)) if submitter else text
