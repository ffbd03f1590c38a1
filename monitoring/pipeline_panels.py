"""The panels of the pipeline and training dashboard, row by row: the feedback's way from
the producer through the stream processor and the fusion weights to the trainer."""

from __future__ import annotations

from monitoring.panels import RATE, Panel, gauge, graph, latest, quantiles, rate, ratio

ADAPTER = 'adapter=~"$adapter"'


def fusion() -> list[Panel]:
    match = 'scenario=~"$scenario", signal=~"$signal"'
    weights = gauge("livealign_fusion_weight", match, "scenario, signal")
    return [
        graph(
            "Fusion weight by scenario and signal",
            "The weight the fuser gives each signal in each scenario.",
            [(weights, "{{scenario}} / {{signal}}")],
            "short",
            16,
        ),
        latest(
            "Current fusion weights",
            "The latest weight of each signal in each scenario.",
            [(weights, "{{scenario}} / {{signal}}")],
        ),
    ]


def trainer() -> list[Panel]:
    stage_s = "livealign_trainer_round_seconds"
    mean_s = ratio(
        f"sum by (stage) (increase({stage_s}_sum[1h]))",
        f"sum by (stage) (increase({stage_s}_count[1h]))",
    )
    sampling = rate("livealign_sampler_calls_total", ADAPTER, "adapter, status")
    return [
        graph(
            "Rounds by outcome",
            "Training rounds started and how they ended.",
            [(f"sum by (outcome) (increase(livealign_trainer_rounds_total{RATE}))", "{{outcome}}")],
            bars=True,
        ),
        graph(
            "Gate metrics",
            "The gate's metrics of the latest candidate.",
            [(gauge("livealign_trainer_gate", by="metric"), "{{metric}}")],
        ),
        graph(
            "Stage durations",
            "Mean duration of each stage of a round, over the last hour.",
            [(mean_s, "{{stage}}")],
            "s",
        ),
        graph(
            "Training loss",
            "Latest training loss, by stage.",
            [(gauge("livealign_trainer_loss", by="stage"), "{{stage}}")],
        ),
        graph(
            "Trainer memory",
            "Resident memory: the latest round's peak, and after the round.",
            [(gauge("livealign_trainer_rss_bytes", by="when"), "{{when}}")],
            "bytes",
        ),
        graph(
            "Teacher sampling",
            "The trainer's sampling calls per second, by adapter and outcome.",
            [(sampling, "{{adapter}}: {{status}}")],
            "cps",
        ),
    ]


def processor() -> list[Panel]:
    written = rate("livealign_processor_records_total", by="type, provenance")
    return [
        graph(
            "Lag",
            "Records behind the high watermark, by topic.",
            [(gauge("livealign_processor_lag", by="topic", agg="sum"), "{{topic}}")],
        ),
        graph(
            "Throughput",
            "Records consumed per second, by topic.",
            [(rate("livealign_processor_consumed_total", by="topic"), "{{topic}}")],
            "cps",
        ),
        graph(
            "Joins and orphans",
            "Feedback joined to its interaction, and feedback whose interaction did not come "
            "within the grace period, per second.",
            [
                (rate("livealign_processor_joins_total"), "joined"),
                (rate("livealign_processor_orphans_total"), "orphaned"),
            ],
            "cps",
        ),
        graph(
            "Drops by reason",
            "Events dropped while cleaning, per second.",
            [(rate("livealign_processor_drops_total", by="reason"), "{{reason}}")],
            "cps",
        ),
        graph(
            "Coordinated raters",
            "The weight factor every newcomer rater gets now (1 until a burst of fresh ids "
            "exceeds their budget), and raters found voting in lockstep, per hour.",
            [
                (gauge("livealign_processor_newcomer_scale", agg="min"), "newcomer scale"),
                (
                    "sum(increase(livealign_processor_lockstep_raters_total[1h]))",
                    "lockstep raters / h",
                ),
            ],
        ),
        graph(
            "Records written",
            "Training records written per second, by type and provenance.",
            [(written, "{{type}} {{provenance}}")],
            "cps",
        ),
        graph(
            "Batch time",
            "Time to process one polled batch, store write included.",
            quantiles("livealign_processor_batch_seconds"),
            "s",
        ),
    ]


def producer() -> list[Panel]:
    sends = ("sent", "failures", "spooled", "replayed", "spool_full")
    return [
        graph(
            "Queue and spool depth",
            "Events waiting in memory to be sent, and in the disk spool, per process.",
            [
                (gauge("livealign_producer_queue_depth", by="instance"), "memory {{instance}}"),
                (gauge("livealign_producer_spool_depth", by="instance"), "spool {{instance}}"),
            ],
        ),
        graph(
            "Spool size",
            "Bytes waiting in the disk spool, per process.",
            [(gauge("livealign_producer_spool_bytes", by="instance"), "{{instance}}")],
            "bytes",
        ),
        graph(
            "Sends",
            "Events per second: acknowledged, failed (then spooled), spooled, replayed after "
            "an outage, refused with the spool full.",
            [
                (rate(f"livealign_producer_{what}_total", by="topic"), f"{what} {{{{topic}}}}")
                for what in sends
            ],
            "cps",
        ),
    ]
