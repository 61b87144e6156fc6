"""What the gate does with each Meta error code (whatsapp-platform.md §5): one table row per code."""

from window_gate.errors import (
    GateError,
    GraphError,
    InvalidRecipient,
    OptedOut,
    RateLimited,
    TemplateNotApproved,
    TemplateNotFound,
    TemplateParametersInvalid,
    UpstreamError,
    ValidationFailed,
    WindowClosed,
)

RE_ENGAGEMENT = 131047
REACTIONS: dict[int, type[GateError]] = {
    RE_ENGAGEMENT: WindowClosed,  # and the window is marked closed_by_meta
    130429: RateLimited,  # number's throughput
    131056: RateLimited,  # pair rate: same customer too often
    4: RateLimited,  # app call rate
    80007: RateLimited,  # WABA call rate
    131026: InvalidRecipient,  # undeliverable: not on WhatsApp, old app
    131021: InvalidRecipient,  # recipient is the sender
    131008: ValidationFailed,  # required parameter missing
    131009: ValidationFailed,  # parameter value invalid
    100: ValidationFailed,  # invalid parameter
    131050: OptedOut,  # the customer stopped marketing messages (recorded from the failed status too)
    132000: TemplateParametersInvalid,  # parameter count mismatch
    132012: TemplateParametersInvalid,  # parameter format mismatch
    132001: TemplateNotFound,  # missing in that language, or not approved
    132015: TemplateNotApproved,  # paused
    132016: TemplateNotApproved,  # disabled
}
RETRY_AFTER_SECONDS = {131056: 6}  # pair rate: about one message per 6 s to one customer


def gate_error(err: GraphError) -> GateError:
    """Meta's refusal as the gate's own, with Meta's error attached for the caller and ops."""
    kind = REACTIONS.get(err.code or 0, UpstreamError)
    detail = f"Meta answered ({err.code}) {err.message}" + (f": {err.details}" if err.details else "")
    # Meta's HTTP status too: the Graph pass-through answers with it (SDKs map 401, 404, 5xx to errors).
    context = {"meta_error": err.raw or {"http_status": err.http_status}, "meta_status": err.http_status}
    if kind is RateLimited:
        return RateLimited(detail, retry_after=RETRY_AFTER_SECONDS.get(err.code or 0, 1), **context)
    return kind(detail, **context)
