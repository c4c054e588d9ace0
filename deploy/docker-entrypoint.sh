#!/bin/sh
# Entry point of the interq image: runs its arguments (CMD) after one decision,
# the same one `interq up` makes: with no GEMINI_API_KEY (nor its other name
# INTERQ_GEMINI_API_KEY) and a simulator offered in INTERQ_SIMULATOR_URL
# (compose.yaml does), talk to the simulator, and say so.
set -eu

# An empty secret is still a value to interq: an empty key would be sent as
# x-goog-api-key, an empty upstream webhook secret would accept deliveries
# signed with the empty key. Empty (e.g. passed through by compose) means unset.
for var in GEMINI_API_KEY INTERQ_GEMINI_API_KEY INTERQ_UPSTREAM_WEBHOOK_SECRET; do
    eval "value=\${$var:-}"
    if [ -z "$value" ]; then
        unset "$var"
    fi
done
unset value

if [ -z "${GEMINI_API_KEY:-}" ] && [ -z "${INTERQ_GEMINI_API_KEY:-}" ]; then
    if [ -n "${INTERQ_SIMULATOR_URL:-}" ]; then
        export INTERQ_UPSTREAM_URL="$INTERQ_SIMULATOR_URL"
        export INTERQ_WEBHOOK_ALLOW_PRIVATE="${INTERQ_WEBHOOK_ALLOW_PRIVATE:-true}"
        echo "=====================================================================" >&2
        echo "NO GEMINI_API_KEY: using the SIMULATOR at $INTERQ_SIMULATOR_URL," >&2
        echo "not the real API. Webhooks to private addresses are allowed." >&2
        echo "=====================================================================" >&2
    fi
fi

exec "$@"
