"""The one exception the SIP layer raises for bad input from the wire."""


class SipParseError(ValueError):
    """A message (or part of one) that is not valid SIP.

    `reason` fits a reason phrase; `status` is the response a request deserves (400, or 505
    for a SIP version we do not speak, §8.2.2 and §21.5.6), in the spirit of h11's
    `error_status_hint`.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
