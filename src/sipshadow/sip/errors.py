"""The one exception the SIP layer raises for bad input from the wire."""


class SipParseError(ValueError):
    """A message (or part of one) that is not valid SIP; `reason` fits a 400 reason phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
