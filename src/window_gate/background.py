"""Every feature's background work, for the entry points that run it (`serve`'s lifespan, `worker`)."""

from window_gate import jobs
from window_gate.message.jobs import registry as message_jobs
from window_gate.subscription.jobs import registry as subscription_jobs
from window_gate.webhook.jobs import registry as webhook_jobs


def registry() -> jobs.Registry:
    return jobs.Registry().include(message_jobs, webhook_jobs, subscription_jobs)
