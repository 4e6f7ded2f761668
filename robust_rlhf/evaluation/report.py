"""The study's HTML report: one self-contained file (plots inlined as PNG, no CDN), built from the
metrics, plot and sample files the stages wrote, so it can be rebuilt without re-running anything."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: the report is built inside a DVC stage
import matplotlib.pyplot as plt  # noqa: E402

from robust_rlhf.evaluation.curves import mean_and_spread  # noqa: E402


@dataclass
class ReportInputs:
    """Everything the report shows, as read from the stages' outputs (see stages/report.py)."""

    profile: str
    methods: dict[str, dict]  # name -> its params entry: reward_model, aggregation, members
    comparison: dict[str, dict]  # metrics/eval/<method>.json
    evaluation: dict  # metrics/eval.json: initial, comparisons, prompts, notes
    curves: dict[str, dict[int, list[dict]]]  # method -> seed -> rows of plots/eval_curves
    best_of_n: dict[str, list[dict]]  # method -> rows of plots/best_of_n
    reward_metrics: dict  # metrics/train_reward.json
    stage_seconds: dict[str, float]  # stage name -> wall seconds
    samples: list[dict]  # reports/eval_samples.jsonl rows
    notes: list[str] = field(default_factory=list)

    @property
    def initial(self) -> dict:
        return self.evaluation["initial"]


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _mean_curve(runs: dict[int, list[dict]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Per checkpoint (rows aligned by position across seeds): mean sqrt(KL), mean and std of `key`."""
    length = min(len(rows) for rows in runs.values())
    xs, means, stds = [], [], []
    for index in range(length):
        xs.append(mean_and_spread([float(rows[index]["sqrt_kl"]) for rows in runs.values()])[0])
        mean, std = mean_and_spread([float(rows[index][key]) for rows in runs.values()])
        means.append(mean)
        stds.append(std)
    return xs, means, stds


CURVE_PANELS = (
    ("gold", "gold reward", "Gold over PPO"),
    ("proxy", "proxy reward (the method's own)", "Proxy over PPO"),
    ("disagreement_brme", "BRME head disagreement on the policy's samples", "BRME disagreement over PPO"),
)


def overoptimization_figure(curves: dict[str, dict[int, list[dict]]]) -> str:
    """Gold, proxy and the BRME's head disagreement against sqrt(KL to the initial policy) over the
    PPO checkpoints: does disagreement rise before gold turns down? A +-1 std band over seeds where
    there is more than one seed."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, runs in curves.items():
        for axis, (key, _, _) in zip(axes, CURVE_PANELS):
            if key not in next(iter(runs.values()))[0]:
                continue
            xs, means, stds = _mean_curve(runs, key)
            (line,) = axis.plot(xs, means, marker="o", label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
            if len(runs) > 1:
                axis.fill_between(
                    xs,
                    [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)],
                    color=line.get_color(),
                    alpha=0.15,
                )
    return _finish(figure, axes, "sqrt(KL(policy || initial)), per-token k3 summed", CURVE_PANELS)


def best_of_n_figure(best_of_n: dict[str, list[dict]]) -> str:
    """Best-of-n from the initial policy, picked by each method's reward: gold (95% band over
    prompts), the picker's proxy and the BRME's disagreement of the pick, against sqrt(log n - (n - 1) / n)."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, rows in best_of_n.items():
        xs = [float(row["sqrt_kl"]) for row in rows]
        (line,) = axes[0].plot(xs, [float(row["gold"]) for row in rows], marker="o", label=method)
        if "gold_ci_low" in rows[0]:
            axes[0].fill_between(
                xs,
                [float(row["gold_ci_low"]) for row in rows],
                [float(row["gold_ci_high"]) for row in rows],
                color=line.get_color(),
                alpha=0.12,
            )
        axes[1].plot(xs, [float(row["proxy"]) for row in rows], marker="o", label=method)
        if "disagreement_brme" in rows[0]:
            axes[2].plot(xs, [float(row["disagreement_brme"]) for row in rows], marker="o", label=method)
    return _finish(
        figure,
        axes,
        "sqrt(log n - (n-1)/n), an upper bound on sqrt(KL)",
        (
            ("", "gold reward of the pick", "Best-of-n: gold"),
            ("", "proxy of the pick", "Best-of-n: proxy"),
            ("", "BRME disagreement on the pick", "Best-of-n: BRME disagreement"),
        ),
    )


def _finish(figure, axes, xlabel: str, panels) -> str:
    """Label each panel, grid, legend on the first; return the figure as an <img>."""
    for axis, (_, ylabel, title) in zip(axes, panels):
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(figure)


def _table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if math.isfinite(value) else str(value)
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(comparison: dict, alpha: float) -> str:
    """'above'/'below' when the interval excludes 0 and Holm's p is under alpha, else 'within noise'."""
    low, high, p_holm = (float(comparison[key]) for key in ("ci_low", "ci_high", "p_holm"))
    if p_holm < alpha and low > 0:
        return "above"
    if p_holm < alpha and high < 0:
        return "below"
    return "within noise"


def power_statement(evaluation: dict, comparison: dict[str, dict], level: float) -> str:
    """How large a gold difference this run can resolve, from its intervals' half-widths."""
    halves = [
        (float(row["ci_high"]) - float(row["ci_low"])) / 2
        for family in evaluation.get("comparisons", {}).values()
        for row in family.values()
    ]
    if not halves:
        return "No comparisons were made."
    prompts = evaluation.get("prompts", {}).get("final", "?")
    seeds = {row["seeds"] for row in comparison.values()}
    spp = {row.get("samples_per_prompt") for row in comparison.values()}
    decided = any(
        _verdict(row, 1 - level) != "within noise"
        for family in evaluation["comparisons"].values()
        for row in family.values()
    )
    return (
        f"Power: the final comparisons pair {prompts} held-out prompts x {', '.join(map(str, sorted(spp)))} samples "
        f"({', '.join(map(str, sorted(seeds)))} PPO seed(s)); their {level:.0%} interval half-widths are "
        f"{min(halves):.3f} to {max(halves):.3f} in gold, so differences smaller than about {min(halves):.2f} "
        f"cannot be told from noise here. "
        + (
            "At least one comparison is decided."
            if decided
            else "No comparison is decided: on these sizes this run is a smoke run of the study, not a ranking."
        )
    )


def best_of_n_finding(method: str, row: dict, curve: list[dict], level: float = 0.95) -> str:
    """Where best-of-n under `method`'s reward peaks, from its evaluate row; a fall after the peak is read
    against the peak's interval (`curve`: the rows of plots/best_of_n/<method>.csv), since a dip of a few
    thousandths in a curve whose band is +-0.1 is no sign of overoptimization."""
    if not row.get("best_of_n_peaks_before_n"):
        last = f"n = {row['best_of_n']} ({row['best_of_n_gold']:.3f})"
        return f"Best-of-n picked by {method}'s reward does not peak up to {last}."
    where = (
        f"peaks at n = {row['best_of_n_peak_n']} ({row['best_of_n_peak_gold']:.3f}) and falls to "
        f"{row['best_of_n_gold']:.3f} at n = {row['best_of_n']}"
    )
    peak = next((r for r in curve if int(float(r["n"])) == int(row["best_of_n_peak_n"])), None)
    if peak is None or "gold_ci_low" not in peak:
        return f"Best-of-n picked by {method}'s reward {where}."
    low, high = float(peak["gold_ci_low"]), float(peak["gold_ci_high"])
    reading = "inside" if row["best_of_n_gold"] >= low else "below"
    noise = "within noise" if reading == "inside" else "beyond noise: overoptimization"
    return (
        f"Best-of-n picked by {method}'s reward {where}, {reading} the peak's {level:.0%} interval "
        f"[{low:.3f}, {high:.3f}]: {noise}."
    )


def findings(inputs: ReportInputs, level: float = 0.95) -> list[str]:
    """Plain statements of what was measured, each from a paired interval: each method's gold change
    vs the initial policy and brme vs every baseline (Holm-adjusted within each family), the
    best-of-n peaks, near-identical objectives, and what the run can resolve."""
    rows = inputs.comparison
    if not rows:
        return ["No method was evaluated."]
    comparisons = inputs.evaluation.get("comparisons", {})
    alpha = 1 - level
    lines = [power_statement(inputs.evaluation, rows, level)]
    for method, row in rows.items():
        gain = comparisons.get("vs_initial", {}).get(method)
        if gain is None:
            continue
        verdict = _verdict(gain, alpha)
        lines.append(
            f"{method} vs the initial policy: gold {interval_text(gain)} (paired, Holm p {float(gain['p_holm']):.2g}): "
            f"{verdict}; proxy {row['proxy_gain']:+.3f}; sqrt(KL) {row['sqrt_kl']:.2f}; "
            f"win rate {row['win_rate']:.2f}; truncated responses {row['truncated']:.0%}."
        )
        if row["proxy_gain"] > 0 and verdict == "below":
            lines.append(f"{method}: proxy reward rose while gold fell beyond noise: reward hacking.")
    for method, difference in comparisons.get("brme_vs", {}).items():
        verdict = {"above": "above it", "below": "below it", "within noise": "not distinguishable from it"}[
            _verdict(difference, alpha)
        ]
        lines.append(
            f"brme vs {method}: gold {interval_text(difference)} (paired, Holm p "
            f"{float(difference['p_holm']):.2g}): {verdict}."
        )
    for method, row in rows.items():
        if "best_of_n_peak_n" in row:
            lines.append(best_of_n_finding(method, row, inputs.best_of_n.get(method, []), level))
    lines += [f"Near-identical objectives: {note}." for note in inputs.evaluation.get("near_identical_objectives", [])]
    if {len(runs) for runs in inputs.curves.values()} == {1}:
        lines.append(
            "One PPO seed per method: the spread over PPO seeds is not in these intervals (set ppo_seeds to "
            ">= 2 seeds)."
        )
    return lines


GOLD_NOTE = (
    "The gold's fluency facet is log p_init, the initial policy's own likelihood, which is also the KL "
    "reference: PPO's KL penalty rewards that facet directly, whatever the proxy says. The facets are shown "
    "apart so that a gain in sentiment can be told from one in fluency."
)


def reward_model_text(reward_model: str, members: list[str] | None) -> str:
    """The comparison table's reward-model cell: a mixture names its members in order (`mixture [a, b]`),
    since two mixtures with different members are different reward models."""
    if reward_model == "mixture" and members:
        return f"mixture [{', '.join(members)}]"
    return reward_model


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    comparisons = inputs.evaluation.get("comparisons", {}).get("vs_initial", {})
    comparison = [
        [
            method,
            reward_model_text(row["reward_model"], inputs.methods.get(method, {}).get("members")),
            row["aggregation"],
            row["seeds"],
            row["gold"],
            interval_text(comparisons.get(method, row["gold_gain"])),
            _number(comparisons.get(method, {}).get("p_holm", "")),
            row["win_rate"],
            row["proxy_gain"],
            row["sqrt_kl"],
            row.get("truncated", ""),
            " / ".join(f"{value:+.3f}" for value in row.get("facet_gains", {}).values()),
            f"{row.get('best_of_n_peak_gold', float('nan')):.3f} (n = {row.get('best_of_n_peak_n', '?')})",
        ]
        for method, row in inputs.comparison.items()
    ]
    facet_names = " / ".join(next(iter(inputs.comparison.values()), {}).get("facet_gains", {}))
    samples_html = []
    for method in ["initial", *inputs.comparison]:
        rows = [row for row in inputs.samples if row["method"] == method]
        if not rows:
            continue
        last_step = max(row["step"] for row in rows)
        picked = [
            row
            for row in rows
            if row["step"] == last_step and row.get("seed", 0) == min(r.get("seed", 0) for r in rows)
        ][:3]
        own = next(iter(inputs.comparison)) if method == "initial" else method
        samples_html.append(
            f"<h3>{html.escape(method)} (step {last_step})</h3>"
            + _table(
                ["prompt", "response", "gold", f"proxy ({own})"],
                [[row["prompt"], row["response"], row["gold"], row.get(f"proxy/{own}", "")] for row in picked],
            )
        )
    total = sum(inputs.stage_seconds.values())
    prompts = inputs.evaluation.get("prompts", {})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>robust-rlhf report ({html.escape(inputs.profile)})</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;
vertical-align:top}}th{{background:#f2f2f2}}img{{max-width:100%}}li{{margin:.2em 0}}</style></head><body>
<h1>robust-rlhf: gold reward vs KL, profile <code>{html.escape(inputs.profile)}</code></h1>
<p>A gold scorer stands in for human judgement; the reward models learned from its noisy preferences;
PPO optimised each method's proxy reward. The gold reward says what really improved.</p>
<h2>What was measured</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in findings(inputs))}</ul>
{"".join(f"<p><em>{html.escape(note)}</em></p>" for note in inputs.notes)}
<h2>Methods at the last PPO checkpoint</h2>
<p>Initial policy: gold {inputs.initial["gold"]:.4f} over {inputs.initial["samples"]} samples of
{prompts.get("final", "?")} held-out prompts. Gold gain is paired with the initial policy's samples of the same
prompts and sampling seed; its interval is a 95% cluster bootstrap over prompts (PPO seeds resampled too when
there are several), p Holm-adjusted over the methods. KL is the per-token k3 summed over the response. Facet
gains: {html.escape(facet_names)}. {html.escape(GOLD_NOTE)}</p>
{
        _table(
            [
                "method",
                "reward model",
                "aggregation",
                "seeds",
                "gold",
                "gold gain [95% CI]",
                "p (Holm)",
                "win rate",
                "proxy gain",
                "sqrt KL",
                "truncated",
                "facet gains",
                "best-of-n peak gold",
            ],
            comparison,
        )
    }
<h2>Overoptimization: reward against sqrt(KL) over PPO checkpoints</h2>
<p>Each checkpoint on the first {prompts.get("curves", "?")} held-out prompts.</p>{
        overoptimization_figure(inputs.curves)
    }
<h2>Best-of-n from the initial policy</h2>
<p>{prompts.get("best_of_n", "?")} held-out prompts; every method picks from the same samples by its own reward.</p>
{best_of_n_figure(inputs.best_of_n)}
{reward_model_section(inputs.reward_metrics, inputs.comparison, inputs.methods)}
{early_warning_section(inputs.evaluation.get("early_warning", {}))}
<h2>Sample responses</h2>{"".join(samples_html)}
<h2>Stage wall times</h2>
{_table(["stage", "seconds"], [[name, seconds] for name, seconds in inputs.stage_seconds.items()] + [["total", total]])}
</body></html>
"""


def interval_text(value) -> str:
    """`0.612 [0.55, 0.67]` for an interval dict, the number itself otherwise, `n/a` when missing."""
    if isinstance(value, dict) and "value" in value:
        return f"{_number(value['value'])} [{_number(value['ci_low'])}, {_number(value['ci_high'])}]"
    return "n/a" if value in (None, "") else _number(value)


def _number(value) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def _above(interval, bound: float) -> bool | None:
    """Whether an interval lies above `bound` (None when it is missing or undefined)."""
    if not isinstance(interval, dict) or "ci_low" not in interval:
        return None
    try:
        low = float(interval["ci_low"])
    except (TypeError, ValueError):
        return None
    return None if math.isnan(low) else low > bound


ENSEMBLE_MEMBERS = {
    "heads": "linear Bradley-Terry heads on the backbone's frozen features, each fitted to its own "
    "bootstrap resample of the training pairs (bagging)",
    "models": "backbones fine-tuned apart, differing only by seed (Coste et al.)",
}


def reward_model_section(
    reward_metrics: dict, comparison: dict[str, dict], methods: dict[str, dict], split: str = "test"
) -> str:
    """Reward-model quality on held-out pairs and whether the BRME's and the ensemble's uncertainty
    is informative, every figure with its interval."""
    figures = reward_metrics.get(split, {})
    if not figures:
        return "<h2>Reward models</h2><p>No reward-model metrics.</p>"
    layout = reward_metrics.get("train", {}).get("ensemble_layout", "")
    quality = []
    if "single" in figures:
        quality.append(["single (stage-1 BT)", *_quality_cells(figures["single"])])
    for kind in ("brme", "ensemble"):
        if kind not in figures:
            continue
        for name, row in figures[kind]["aggregates"].items():
            quality.append([f"{kind}: {name} of heads", *_quality_cells(row)])
        for name, row in figures[kind]["heads"].items():
            quality.append([f"{kind} {name}", *_quality_cells(row)])
    uncertainty = []
    for kind in ("brme", "ensemble"):
        for held_out in ("val", "test"):
            row = reward_metrics.get(held_out, {}).get(kind)
            if row is None:
                continue
            shift = reward_metrics.get("shift", {}).get(kind, {}).get("disagreement_ratio")
            policies = [
                f"{method}: {interval_text(result.get(f'{kind}_disagreement_ratio'))}"
                for method, result in comparison.items()
                if f"{kind}_disagreement_ratio" in result
            ]
            uncertainty.append(
                [
                    f"{kind} ({held_out})",
                    interval_text(row.get("relative_disagreement")),
                    interval_text(row.get("auroc_disagreement_misranked")),
                    interval_text(row.get("auroc_sigma_misranked")),
                    interval_text(shift),
                    "; ".join(policies) or "n/a",
                    _shares(row.get("nominal_share")),
                    _shares(row.get("min_share")),
                ]
            )
    pairs = figures.get("pairs", "?")
    return f"""<h2>Reward models on the {split} split</h2>
<p>{pairs} held-out pairs from {figures.get("prompts", "?")} distinct prompts; every interval is a 95% cluster
bootstrap over prompts. Accuracy is against the noisy labels, gold accuracy against the gold order;
NLL is each model's own likelihood of the labels (the BRME's with its sigmas: Thurstone). The
ensemble's members are {html.escape(ENSEMBLE_MEMBERS.get(layout, layout or "unknown"))}; the BRME's heads
share one backbone and are anchored around the stage-1 head (docs/method.md).</p>
{_table(["model", "accuracy", "gold accuracy", "NLL", "ECE"], quality)}
<h2>Is the uncertainty informative?</h2>
<p>Relative disagreement: mean std of mu across heads over the spread of rewards across responses (0: the
heads are one model). AUROC: how well a pair's head disagreement (or the BRME's sigma) picks out the pairs
the model's mean ranks against gold (0.5: no better than chance). Off-distribution ratio: disagreement on
responses that are not the initial policy's (high-temperature samples; each method's final PPO samples)
over disagreement on the initial policy's own. Shares: how often each head is nominal (smallest sigma) /
the min.</p>
{
        _table(
            [
                "reward model",
                "relative disagreement",
                "AUROC disagreement",
                "AUROC sigma",
                "off-distribution ratio (hot samples)",
                "off-distribution ratio (final policies)",
                "nominal share",
                "min share",
            ],
            uncertainty,
        )
    }
<p>An AUROC counts as informative only when its interval lies above 0.5 on both held-out splits (val and
test): one split alone, among this many figures, is too easily chance.</p>
<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in uncertainty_findings(reward_metrics, comparison))}</ul>"""


def _quality_cells(row: dict) -> list[str]:
    return [
        interval_text(row.get("accuracy")),
        interval_text(row.get("gold_accuracy")),
        interval_text(row.get("nll")),
        interval_text(row.get("ece")),
    ]


def _shares(shares) -> str:
    return " / ".join(f"{float(share):.2f}" for share in shares) if shares else "n/a"


def uncertainty_findings(reward_metrics: dict, comparison: dict[str, dict]) -> list[str]:
    """One sentence per multi-head reward model: is its uncertainty informative on this run? The
    intervals decide: an AUROC above 0.5 on both held-out splits (on one split only is named as not
    replicated), an off-distribution ratio above 1."""
    splits = [split for split in ("val", "test") if split in reward_metrics]
    lines = []
    single = [_above(reward_metrics[split].get("single", {}).get("gold_accuracy"), 0.5) for split in splits]
    if single and None not in single:
        verdict = (
            "yes on " + " and ".join(s for s, v in zip(splits, single) if v) + " (the interval lies above 0.5)"
            if any(single)
            else "no (every interval reaches 0.5)"
        )
        lines.append(f"The single reward model ranks held-out pairs better than chance under gold: {verdict}.")
    for kind in ("brme", "ensemble"):
        if not any(kind in reward_metrics[split] for split in splits):
            continue
        shown, one_split, refuted = [], [], []
        for key, name in (
            ("auroc_disagreement_misranked", "head disagreement predicts gold mis-rankings"),
            ("auroc_sigma_misranked", "sigma predicts gold mis-rankings"),
        ):
            verdicts = {split: _above(reward_metrics[split].get(kind, {}).get(key), 0.5) for split in splits}
            if all(v is None for v in verdicts.values()):
                continue
            above = [split for split, verdict in verdicts.items() if verdict]
            if len(above) == len(splits):
                shown.append(name)
            elif above:
                one_split.append(f"{name} (on {above[0]} only)")
            else:
                refuted.append(name)
        checks = {
            "heads disagree more on high-temperature samples": _above(
                reward_metrics.get("shift", {}).get(kind, {}).get("disagreement_ratio"), 1.0
            )
        }
        policies = {
            method: _above(result[f"{kind}_disagreement_ratio"], 1.0)
            for method, result in comparison.items()
            if f"{kind}_disagreement_ratio" in result
        }
        if policies:
            more = [method for method, verdict in policies.items() if verdict]
            checks["heads disagree more on the final PPO samples of " + (", ".join(more) if more else "any method")] = (
                bool(more)
            )
        shown += [name for name, verdict in checks.items() if verdict]
        refuted += [name for name, verdict in checks.items() if verdict is False]
        caveat = f" Not replicated: {'; '.join(one_split)}." if one_split else ""
        if shown:
            lines.append(
                f"{kind}: its uncertainty is informative on this run where the interval excludes chance: "
                f"{'; '.join(shown)}. Not shown (the interval reaches chance): {'; '.join(refuted) or 'none'}." + caveat
            )
        else:
            lines.append(
                f"{kind}: no sign that its uncertainty is informative on this run (the intervals reach "
                f"chance: {'; '.join(refuted) or 'nothing measured'})." + caveat
            )
    return lines


def early_warning_section(early_warning: dict[str, dict[str, dict]]) -> str:
    """Per method, each monitor signal's firing step against the step at which gold fell while the proxy
    rose (robust_rlhf/evaluation/early_warning.py), one row per seed and signal; says plainly when gold
    never dropped, since the warning then cannot be judged."""
    parts = [
        "<h2>Reward-hacking early warning against gold</h2>",
        "<p>A signal is <em>before</em> when it fired on a policy earlier than the first checkpoint whose "
        "gold fell below its best so far while the proxy rose; <em>after</em> otherwise (ppo.monitor sets the "
        "thresholds).</p>",
    ]
    if not any(early_warning.values()):
        return parts[0] + "<p>No run logged monitor warnings (ppo.monitor.enabled is off).</p>"
    for method, seeds in early_warning.items():
        rows = [
            [seed, signal, _step(verdict["fired_step"]), _step(run["gold_drop_step"]), verdict["verdict"]]
            for seed, run in seeds.items()
            for signal, verdict in run["signals"].items()
        ]
        undropped = [seed for seed, run in seeds.items() if run["gold_drop_step"] is None]
        note = (
            f"<p>Gold never dropped while the proxy rose (seed {', '.join(undropped)}): the warning cannot be "
            "judged there.</p>"
            if undropped
            else ""
        )
        parts.append(
            f"<h3>{html.escape(method)}</h3>{note}"
            + _table(["seed", "signal", "fired at step", "gold drop at step", "warning"], rows)
        )
    return "".join(parts)


def _step(step) -> str:
    return "never" if step is None else str(step)
