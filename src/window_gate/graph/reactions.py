"""What the gate does with each Meta error code (docs/meta-rules.md): one table row per code."""

from window_gate.errors import (
    GateError,
    GraphError,
    InvalidRecipient,
    MarketingLimited,
    OptedOut,
    RateLimited,
    TemplateNotApproved,
    TemplateNotFound,
    TemplateParametersInvalid,
    Undeliverable,
    UpstreamConfiguration,
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
    131048: RateLimited,  # spam rate limit: the number is restricted for its quality
    131064: RateLimited,  # the number's messaging limit is restricted (unsure what lifts it)
    131049: MarketingLimited,  # per-user marketing limit: this customer, not before 24 h
    130472: MarketingLimited,  # the customer is in Meta's marketing experiment group (unsure how long)
    131026: Undeliverable,  # not on WhatsApp, an old app, terms not accepted: not a malformed number
    131021: InvalidRecipient,  # recipient is the sender
    131062: InvalidRecipient,  # a BSUID recipient is not supported here: send to the phone number
    131008: ValidationFailed,  # required parameter missing
    131009: ValidationFailed,  # parameter value invalid
    100: ValidationFailed,  # invalid parameter
    131050: OptedOut,  # the customer stopped marketing messages (recorded from the failed status too)
    132000: TemplateParametersInvalid,  # parameter count mismatch
    132012: TemplateParametersInvalid,  # parameter format mismatch
    132005: TemplateParametersInvalid,  # the text once filled in is too long
    132007: TemplateParametersInvalid,  # the filled-in content breaks a character policy
    132018: TemplateParametersInvalid,  # a parameter Meta cannot take (newline, tab, 5+ spaces)
    132001: TemplateNotFound,  # missing in that language, or not approved
    132015: TemplateNotApproved,  # paused
    132016: TemplateNotApproved,  # disabled
    132068: TemplateNotApproved,  # its flow is blocked
    132069: TemplateNotApproved,  # its flow is throttled (10 sends an hour)
    190: UpstreamConfiguration,  # access token expired or invalid
    368: UpstreamConfiguration,  # account temporarily blocked for a policy violation
    131005: UpstreamConfiguration,  # permission not granted or removed
    131031: UpstreamConfiguration,  # business account locked
    133010: UpstreamConfiguration,  # business number not registered
    131063: UpstreamConfiguration,  # marketing templates are not available to this account on Cloud API
}
# Seconds before the same request may be tried again; RateLimited defaults to 1. Meta's app (4) and WABA
# (80007) limits count calls over a rolling hour, so a second is too soon: 60, or longer when Meta's
# X-Business-Use-Case-Usage header says so (estimated_time_to_regain_access).
RETRY_AFTER_SECONDS = {
    131056: 6,  # pair rate: about one message per 6 s to one customer
    4: 60,
    80007: 60,
    131048: 3600,  # unsure
    131064: 3600,  # unsure
    131049: 86_400,  # Meta: wait at least 24 h before the next marketing message to this customer
    130472: 86_400,  # unsure: Meta does not say how long an experiment lasts
    132069: 3600,
}
# Refusals of one customer's marketing that the gate remembers per (number, customer) for their
# RETRY_AFTER_SECONDS, refusing that customer's marketing templates itself meanwhile (before anything is paid).
MARKETING_HOLDS = frozenset(code for code, kind in REACTIONS.items() if kind is MarketingLimited)


def gate_error(err: GraphError) -> GateError:
    """Meta's refusal as the gate's own, with Meta's error attached for the caller and ops."""
    code = err.code or 0
    kind = REACTIONS.get(code, UpstreamError)
    detail = f"Meta answered ({err.code}) {err.message}" + (f": {err.details}" if err.details else "")
    # Meta's HTTP status too: the Graph pass-through answers with it (SDKs map 401, 404, 5xx to errors).
    context = {"meta_error": err.raw or {"http_status": err.http_status}, "meta_status": err.http_status}
    wait = RETRY_AFTER_SECONDS.get(code)
    if kind is RateLimited:
        return RateLimited(detail, retry_after=max(wait or 1, err.regain_seconds or 0), **context)
    if kind is MarketingLimited:
        hours = (wait or 0) // 3600
        return MarketingLimited(
            f"{detail}; do not send marketing messages to this customer for {hours} h",
            retry_after=wait or 0,
            **context,
        )
    refusal = kind(detail, **context)
    if wait:
        refusal.context["retry_after"] = wait
        refusal.headers["Retry-After"] = str(wait)
    return refusal
