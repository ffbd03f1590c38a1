"""Every Prometheus metric LiveAlign exports, defined once.

Labels let an operator look at one adapter version or one canary arm
(``adapter``, ``arm``) and at one topic or feedback kind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)

# --- serving -----------------------------------------------------------------------
REQUESTS = Counter(
    "livealign_chat_requests_total",
    "Chat completion requests by outcome.",
    ["adapter", "arm", "stream", "status"],
)
REQUEST_LATENCY = Histogram(
    "livealign_chat_latency_seconds",
    "Time from request to last token.",
    ["adapter", "arm", "stream"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "livealign_chat_ttft_seconds",
    "Time from request to first generated token.",
    ["adapter", "arm", "stream"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "livealign_chat_tokens_total",
    "Tokens processed, by prompt/completion.",
    ["adapter", "arm", "type"],
)
DECODE_SPEED = Histogram(
    "livealign_chat_decode_tokens_per_second",
    "Completion tokens per second after the first token, per answer of two tokens or more.",
    ["adapter", "arm", "stream"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
IN_FLIGHT = Gauge("livealign_chat_in_flight", "Chat requests being generated now.", ["adapter"])
API_CALLS = Counter(
    "livealign_api_calls_total",
    "Chat and feedback calls by API-key principal (`public` while keys are off; `none` "
    "without a valid key) and outcome: ok, unauthenticated, rate_limited.",
    ["principal", "route", "outcome"],
)
FEEDBACK = Counter(
    "livealign_feedback_total",
    "Feedback events by kind and outcome (accepted, or the reason for rejection).",
    ["kind", "result"],
)
COMPARE_VOTES = Counter(
    "livealign_feedback_compare_total",
    "Side-by-side compare votes accepted, one per vote, by its verdict on the answer it "
    "names first: better, worse, tie, both_bad (the chat page names the left one).",
    ["verdict"],
)
WIDGET_EVENTS = Counter(
    "livealign_feedback_widget_events_total",
    "Feedback events the browser widget (/widget.js) delivered, by kind and transport "
    "(fetch, or beacon when the page was being hidden), accepted or not.",
    ["kind", "transport", "result"],
)
SAMPLES = Counter(
    "livealign_sampler_samples_total",
    "Answers sampled for the trainer's teacher (not user traffic: no interaction is logged), "
    "by adapter.",
    ["adapter"],
)
SAMPLE_CALLS = Counter(
    "livealign_sampler_calls_total",
    "Sampling calls from the trainer, by adapter and outcome (ok, refused, timeout, error).",
    ["adapter", "status"],
)

# --- producer ------------------------------------------------------------------------
PRODUCER_SENT = Counter(
    "livealign_producer_sent_total", "Events acknowledged by the broker.", ["topic"]
)
PRODUCER_FAILURES = Counter(
    "livealign_producer_failures_total", "Broker sends that failed (then spooled).", ["topic"]
)
PRODUCER_SPOOLED = Counter(
    "livealign_producer_spooled_total", "Events written to the disk spool.", ["topic"]
)
PRODUCER_SPOOL_FULL = Counter(
    "livealign_producer_spool_full_total",
    "Events refused because the disk spool was full or could not be written.",
    ["topic"],
)
PRODUCER_THREAD_ERRORS = Counter(
    "livealign_producer_thread_errors_total",
    "Errors the producer's sender thread caught and outlived (it backs off, then goes on).",
)
PRODUCER_REPLAYED = Counter(
    "livealign_producer_replayed_total", "Spooled events delivered after an outage.", ["topic"]
)
SPOOL_DEPTH = Gauge("livealign_producer_spool_depth", "Events waiting in the disk spool.")
SPOOL_BYTES = Gauge("livealign_producer_spool_bytes", "Bytes waiting in the disk spool.")
PRODUCER_QUEUE = Gauge("livealign_producer_queue_depth", "Events waiting in memory to be sent.")
SPOOL_CAPACITY = Gauge(
    "livealign_producer_spool_capacity_bytes",
    "Bytes the disk spool may hold before it refuses events (its bound).",
)
PRODUCER_ACKED_TS = Gauge(
    "livealign_producer_acked_timestamp_seconds",
    "Kafka timestamp of the newest event the broker acknowledged, by topic.",
    ["topic"],
)

# --- stream processor ------------------------------------------------------------------
PROC_CONSUMED = Counter(
    "livealign_processor_consumed_total", "Records consumed, by topic.", ["topic"]
)
PROC_LAG = Gauge(
    "livealign_processor_lag",
    "Records behind the partition's high watermark.",
    ["topic", "partition"],
)
PROC_JOINS = Counter(
    "livealign_processor_joins_total", "Feedback events joined to their interaction."
)
FEEDBACK_JOINED = Counter(
    "livealign_feedback_joined_total",
    "Feedback events joined to their interaction, by kind and by the adapter version and "
    "canary arm that gave the answer.",
    ["kind", "adapter", "arm"],
)
PROC_ORPHANS = Counter(
    "livealign_processor_orphans_total",
    "Feedback events whose interaction did not arrive within the grace period.",
)
PROC_DROPS = Counter(
    "livealign_processor_drops_total", "Events dropped while cleaning, by reason.", ["reason"]
)
COORDINATION_NEWCOMER_SCALE = Gauge(
    "livealign_processor_newcomer_scale",
    "Weight factor of every newcomer rater now: 1 while newcomers' votes are within their "
    "budget, lower during a burst of fresh ids.",
)
COORDINATION_LOCKSTEP = Counter(
    "livealign_processor_lockstep_raters_total",
    "Raters found voting in lockstep (the same partners in the same second, again and "
    "again), down-weighted from then on.",
)
PROC_RECORDS = Counter(
    "livealign_processor_records_total",
    "Training records written (upserts), by type.",
    ["type", "provenance"],
)
PROC_BATCH_SECONDS = Histogram(
    "livealign_processor_batch_seconds",
    "Time to process one polled batch, store write included.",
    buckets=LATENCY_BUCKETS,
)
FUSION_WEIGHT = Gauge(
    "livealign_fusion_weight",
    "Current fusion weight of each signal in each scenario.",
    ["scenario", "signal"],
)
PROC_CONSUMED_TS = Gauge(
    "livealign_processor_consumed_timestamp_seconds",
    "Kafka timestamp of the newest record processed and committed, by topic (the "
    "producer's acknowledged timestamp minus this: how far behind the processor is).",
    ["topic"],
)

# --- adapters --------------------------------------------------------------------------
SERVED_ADAPTER = Gauge(
    "livealign_served_adapter",
    "1 for each adapter version new requests go to (stable, and the canary if any).",
    ["adapter"],
)
LOADED_ADAPTER = Gauge(
    "livealign_loaded_adapter",
    "1 while this replica's engine holds the adapter version's weights (from its load to "
    "its unload, after its last request).",
    ["adapter"],
)
CANARY_WEIGHT = Gauge(
    "livealign_canary_weight",
    "Share of new conversations this replica routes to the canary version (0 once it is "
    "promoted or rolled back).",
    ["adapter"],
)
ADAPTER_SWAPS = Counter(
    "livealign_adapter_swaps_total", "Adapter swaps, by result (ok, refused).", ["result"]
)
SWAP_SECONDS = Histogram(
    "livealign_adapter_swap_seconds",
    "From the decision to swap to the old adapter unloaded.",
    buckets=LATENCY_BUCKETS,
)

# --- trainer ---------------------------------------------------------------------------
ROUNDS = Counter(
    "livealign_trainer_rounds_total",
    "Training rounds by outcome (started, published, rejected, skipped, failed).",
    ["outcome"],
)
ROUND_SECONDS = Histogram(
    "livealign_trainer_round_seconds",
    "Duration of each stage of a round (reward, policy, gate, publish).",
    ["stage"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
TRAIN_LOSS = Gauge("livealign_trainer_loss", "Latest training loss, by stage.", ["stage"])
TRAINER_RSS = Gauge(
    "livealign_trainer_rss_bytes",
    "Resident memory of the trainer process: the latest round's peak, and after the round.",
    ["when"],
)
GATE_METRIC = Gauge(
    "livealign_trainer_gate",
    "Gate metrics of the latest candidate (pref_accuracy, win_rate, ...).",
    ["candidate", "metric"],
)
CONSECUTIVE_REJECTIONS = Gauge(
    "livealign_trainer_consecutive_rejections",
    "Rounds in a row whose candidate the gate rejected (skipped rounds do not count).",
)
CONSECUTIVE_FAILURES = Gauge(
    "livealign_trainer_consecutive_failures",
    "Rounds in a row that failed with an error (skipped rounds do not count).",
)

# --- canary controller ---------------------------------------------------------------
CANARY_DECISIONS = Counter(
    "livealign_canary_decisions_total",
    "Canary controller decisions, by canary version, action and reason.",
    ["adapter", "action", "reason"],
)
CANARY_SETTLED = Gauge(
    "livealign_canary_settled_conversations",
    "Settled, scored conversations of each arm since the canary's rollout started.",
    ["adapter", "arm"],
)
CANARY_SCORE = Gauge(
    "livealign_canary_arm_score",
    "Mean fused score of each arm's settled, scored conversations since the rollout began.",
    ["adapter", "arm"],
)
CANARY_DIFFERENCE = Gauge(
    "livealign_canary_score_difference",
    "Canary minus stable mean fused score: the estimate and its anytime-valid bounds.",
    ["adapter", "bound"],
)
CANARY_STEP_STARTED = Gauge(
    "livealign_canary_step_started_timestamp_seconds",
    "Unix time the current step of the canary's rollout began (the canary on trial only).",
    ["adapter"],
)
