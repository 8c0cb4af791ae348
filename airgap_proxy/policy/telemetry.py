"""Known telemetry and error-reporting hosts of agent tools (pure data).

The forward proxy labels a tunnel to one of these ``category: telemetry``
and refuses it before any name resolution (a lookup alone says an agent ran).
Patterns use the deny-list syntax (:func:`airgap_proxy.policy.host_matches`).
Operators add their own with ``forward_proxy.telemetry_hosts``.
"""

from __future__ import annotations

TELEMETRY = "agent-tool telemetry"

# (pattern, whose): the tools that are documented or observed to use each.
BUILTIN_TELEMETRY_HOSTS: tuple[tuple[str, str], ...] = (
    ("statsig.anthropic.com", "Claude Code feature flags and events"),
    ("statsig.com", "Statsig (Claude Code)"),
    ("*.statsig.com", "Statsig (Claude Code)"),
    ("featuregates.org", "Statsig (Claude Code)"),
    ("*.featuregates.org", "Statsig (Claude Code)"),
    ("sentry.io", "Sentry error reporting (Claude Code, many SDKs)"),
    ("*.sentry.io", "Sentry error reporting (Claude Code, many SDKs)"),
    ("*.ingest.sentry.io", "Sentry error reporting (Claude Code, many SDKs)"),
    ("http-intake.logs.datadoghq.com", "Datadog log intake (Claude Code)"),
    ("*.datadoghq.com", "Datadog intake"),
    ("ab.chatgpt.com", "Codex CLI experiments"),
    ("api.segment.io", "Segment analytics"),
    ("*.segment.io", "Segment analytics"),
    ("*.segment.com", "Segment analytics"),
    ("*.posthog.com", "PostHog analytics (Continue, aider)"),
    ("api.mixpanel.com", "Mixpanel analytics (aider)"),
    ("*.mixpanel.com", "Mixpanel analytics"),
    ("api2.amplitude.com", "Amplitude analytics"),
    ("*.amplitude.com", "Amplitude analytics"),
)
