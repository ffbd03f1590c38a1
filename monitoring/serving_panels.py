"""The panels of the serving and feedback dashboard, row by row: serving metrics next to
what users think of the answers, per adapter version (``$adapter``) and canary arm
(``$arm``) wherever a metric has those labels."""

from __future__ import annotations

from monitoring.panels import DASHED, RATE, Panel, gauge, graph, quantiles, rate, ratio

ADAPTER = 'adapter=~"$adapter"'
AA = 'adapter=~"$adapter", arm=~"$arm"'  # both variables, in every selector with both labels
BY_ARM = "adapter, arm"
ARM_LEGEND = "{{adapter}} / {{arm}}"


def traffic() -> list[Panel]:
    requests = "livealign_chat_requests_total"
    errors, every = rate(requests, AA + ', status="error"', BY_ARM), rate(requests, AA, BY_ARM)
    return [
        graph(
            "Requests",
            "Chat completion requests per second.",
            [(rate(requests, AA, BY_ARM), ARM_LEGEND)],
            "reqps",
            6,
        ),
        graph(
            "Error ratio",
            "Share of requests that failed (no answer was given).",
            [(ratio(errors, every), ARM_LEGEND)],
            "percentunit",
            6,
        ),
        graph(
            "Requests by outcome",
            "ok, error, or aborted (the client went away).",
            [(rate(requests, AA, "status"), "{{status}}")],
            "reqps",
            6,
        ),
        graph(
            "In flight",
            "Chat requests being generated now.",
            [(gauge("livealign_chat_in_flight", ADAPTER, "adapter", "sum"), "{{adapter}}")],
            "short",
            6,
        ),
    ]


def latency() -> list[Panel]:
    return [
        graph(
            "Latency",
            "Time from request to last token: p50, p90, p99.",
            quantiles("livealign_chat_latency_seconds", AA, BY_ARM),
            "s",
            6,
        ),
        graph(
            "Time to first token",
            "Time from request to first generated token: p50, p90, p99.",
            quantiles("livealign_chat_ttft_seconds", AA, BY_ARM),
            "s",
            6,
        ),
        graph(
            "Decode speed",
            "Completion tokens per second after the first token, per answer: the median and "
            "the slowest tenth (p10).",
            quantiles("livealign_chat_decode_tokens_per_second", AA, BY_ARM, (0.5, 0.1)),
            "short",
            6,
        ),
        graph(
            "Tokens per second",
            "Prompt and completion tokens processed per second.",
            [
                (
                    rate("livealign_chat_tokens_total", AA, BY_ARM + ", type"),
                    ARM_LEGEND + " {{type}}",
                )
            ],
            "short",
            6,
        ),
    ]


def engine() -> list[Panel]:
    """vLLM's own metrics. One engine serves every adapter version, and they carry no
    adapter or arm label: these panels show the engine as a whole."""
    hits, queries = rate("vllm:prefix_cache_hits_total"), rate("vllm:prefix_cache_queries_total")
    return [
        graph(
            "Engine queue",
            "Requests in the engine's running batch and waiting for one (vLLM's metrics: "
            "one engine serves every adapter version, so no adapter or arm here).",
            [
                (gauge("vllm:num_requests_running", agg="sum"), "running"),
                (gauge("vllm:num_requests_waiting", agg="sum"), "waiting"),
            ],
        ),
        graph(
            "Engine queue time",
            "Time requests spent waiting in the engine: p50, p90, p99.",
            quantiles("vllm:request_queue_time_seconds"),
            "s",
        ),
        graph(
            "KV cache usage",
            "Share of the engine's KV cache in use (the fullest engine).",
            [(gauge("vllm:kv_cache_usage_perc"), "usage")],
            "percentunit",
        ),
        graph(
            "Preemptions",
            "Requests the engine preempted per second (its KV cache ran out).",
            [(rate("vllm:num_preemptions_total"), "preemptions")],
            "cps",
            12,
        ),
        graph(
            "Prefix cache hit ratio",
            "Share of queried prompt tokens found in the prefix cache.",
            [(ratio(hits, queries), "hits")],
            "percentunit",
            12,
        ),
    ]


WIDGET = "livealign_feedback_widget_events_total"


def feedback() -> list[Panel]:
    joined, given = "livealign_feedback_joined_total", "livealign_chat_requests_total"
    per_answer = ratio(rate(joined, AA, BY_ARM), rate(given, AA + ', status="ok"', BY_ARM))
    refused = rate("livealign_feedback_total", 'result!="accepted"', "kind, result")
    return [
        graph(
            "Feedback accepted, by kind",
            "Feedback events accepted per second.",
            [(rate("livealign_feedback_total", 'result="accepted"', "kind"), "{{kind}}")],
            "cps",
            6,
        ),
        graph(
            "Feedback refused",
            "Feedback events refused per second, by kind and reason.",
            [(refused, "{{kind}}: {{result}}")],
            "cps",
            6,
        ),
        graph(
            "Feedback per arm, by kind",
            "Feedback events joined to the answer they are about, per second, by the adapter "
            "version and arm that gave it (counted by the stream processor).",
            [(rate(joined, AA, BY_ARM + ", kind"), ARM_LEGEND + " {{kind}}")],
            "cps",
            6,
        ),
        graph(
            "Feedback per answer",
            "Feedback events joined per answer given, per arm.",
            [(per_answer, ARM_LEGEND)],
            "short",
            6,
        ),
        graph(
            "Widget deliveries",
            "Feedback events the browser widget delivered per second, by transport (fetch, or "
            "beacon as the page was hidden) and result: a rising beacon share with refusals "
            "means feedback lost as tabs close.",
            [(rate(WIDGET, "", "transport, result"), "{{transport}}: {{result}}")],
            "cps",
            6,
        ),
        graph(
            "Compare votes, by verdict",
            "Side-by-side votes per second, by the verdict on the answer named first: many "
            "ties or both_bad mean the two versions are hard to tell apart or both poor.",
            [(rate("livealign_feedback_compare_total", "", "verdict"), "{{verdict}}")],
            "cps",
            6,
        ),
    ]


def canary_score() -> list[Panel]:
    difference = gauge("livealign_canary_score_difference", ADAPTER, "adapter, bound")
    settled = gauge("livealign_canary_settled_conversations", AA, BY_ARM)
    return [
        graph(
            "Mean fused score per arm",
            "Mean fused score of each arm's settled, scored conversations since the canary's "
            "rollout began.",
            [(gauge("livealign_canary_arm_score", AA, BY_ARM), ARM_LEGEND)],
        ),
        graph(
            "Canary minus stable, with its interval",
            "The estimate of the difference in mean fused score and its anytime-valid bounds "
            "(dashed): the controller rolls back when the upper bound is below 0 and moves on "
            "when the lower bound is above minus its margin.",
            [(difference, "{{adapter}} {{bound}}")],
        ).override_by_regexp("(lower|upper)$", [DASHED]),
        graph(
            "Settled conversations per arm",
            "Settled, scored conversations of each arm since the rollout began.",
            [(settled, ARM_LEGEND)],
        ),
    ]


def canary_rollout() -> list[Panel]:
    decisions = (
        "sum by (adapter, action, reason) "
        f"(increase(livealign_canary_decisions_total{{{ADAPTER}}}{RATE}))"
    )
    swaps = f"sum by (result) (increase(livealign_adapter_swaps_total{RATE}))"
    return [
        graph(
            "Canary weight",
            "Share of new conversations routed to the canary version.",
            [(gauge("livealign_canary_weight", ADAPTER, "adapter"), "{{adapter}}")],
            "percentunit",
            6,
        ),
        graph(
            "Adapter versions served",
            "1 for each version new requests go to.",
            [(gauge("livealign_served_adapter", ADAPTER, "adapter"), "{{adapter}}")],
            "short",
            6,
        ),
        graph(
            "Canary decisions",
            "The controller's decisions by action and reason (those other than hold are also "
            "marked on every graph).",
            [(decisions, "{{adapter}} {{action}}: {{reason}}")],
            "short",
            12,
            bars=True,
        ),
        graph(
            "Adapter swaps",
            "Adapter swaps by result (ok, refused).",
            [(swaps, "{{result}}")],
            "short",
            12,
            bars=True,
        ),
        graph(
            "Adapter swap time",
            "From the decision to swap to the old adapter unloaded: p50, p90.",
            quantiles("livealign_adapter_swap_seconds", qs=(0.5, 0.9)),
            "s",
            12,
        ),
    ]
