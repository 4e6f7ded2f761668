"""The study's HTML report: one self-contained file (plots inlined as PNG, no CDN), built from the
metrics, plot and sample files the stages wrote, so it can be rebuilt without re-running anything."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: the report is built inside a DVC stage
import matplotlib.pyplot as plt  # noqa: E402

from robust_rlhf.curves import mean_and_spread  # noqa: E402


@dataclass
class ReportInputs:
    """Everything the report shows, as read from the stages' outputs (see stages/report.py)."""

    profile: str
    methods: dict[str, dict]                     # name -> {"reward_model", "aggregation"}
    comparison: dict[str, dict]                  # metrics/eval/<method>.json
    initial: dict                                # metrics/eval.json["initial"]
    curves: dict[str, dict[int, list[dict]]]     # method -> seed -> rows of plots/eval_curves
    best_of_n: dict[str, list[dict]]             # method -> rows of plots/best_of_n
    reward_metrics: dict                         # metrics/train_reward.json
    stage_seconds: dict[str, float]              # stage name -> wall seconds
    samples: list[dict]                          # reports/eval_samples.jsonl rows
    notes: list[str] = field(default_factory=list)


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


def overoptimization_figure(curves: dict[str, dict[int, list[dict]]]) -> str:
    """Gold and proxy reward against sqrt(KL to the initial policy) over the PPO checkpoints; a band
    of +-1 std over seeds where there is more than one seed."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in curves.items():
        for axis, key in zip(axes, ("gold", "proxy")):
            xs, means, stds = _mean_curve(runs, key)
            (line,) = axis.plot(xs, means, marker="o", label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
            if len(runs) > 1:
                axis.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                  color=line.get_color(), alpha=0.15)
    return _finish(figure, axes, "sqrt(KL(policy || initial))", ("gold reward", "Gold reward over PPO"),
                   ("proxy reward (the method's own)", "Proxy reward over PPO"))


def best_of_n_figure(best_of_n: dict[str, list[dict]]) -> str:
    """Best-of-n from the initial policy, picked by each method's reward: gold (and the picker's own
    proxy) against sqrt(log n - (n - 1) / n)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, rows in best_of_n.items():
        xs = [float(row["sqrt_kl"]) for row in rows]
        axes[0].plot(xs, [float(row["gold"]) for row in rows], marker="o", label=method)
        axes[1].plot(xs, [float(row["proxy"]) for row in rows], marker="o", label=method)
    return _finish(figure, axes, "sqrt(KL) = sqrt(log n - (n-1)/n)", ("gold reward of the pick", "Best-of-n: gold"),
                   ("proxy reward of the pick", "Best-of-n: the picker's proxy"))


def _finish(figure, axes, xlabel: str, gold_labels: tuple[str, str], proxy_labels: tuple[str, str]) -> str:
    """Label the gold (left) and proxy (right) panels, grid, legend; return the figure as an <img>."""
    for axis, (ylabel, title) in zip(axes, (gold_labels, proxy_labels)):
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


def findings(inputs: ReportInputs) -> list[str]:
    """Plain statements of what was measured: the best method on gold, each method's gain over the
    initial policy against the sampling noise, and how `brme` compares with the baselines."""
    rows = inputs.comparison
    if not rows:
        return ["No method was evaluated."]
    initial_gold, initial_se = inputs.initial["gold"], inputs.initial["gold_std"] / math.sqrt(inputs.initial["samples"])
    lines = []
    best = max(rows, key=lambda m: rows[m]["gold"])
    lines.append(f"Highest final gold reward: {best} ({rows[best]['gold']:.4f}; initial policy {initial_gold:.4f}).")
    for method, row in rows.items():
        noise = 2 * math.hypot(row["gold_standard_error"], initial_se)
        verdict = ("above it beyond" if row["gold_gain"] > noise else "below it beyond" if row["gold_gain"] < -noise
                   else "within")
        lines.append(f"{method}: gold {row['gold_gain']:+.4f} vs the initial policy, {verdict} sampling noise "
                     f"(2 standard errors = {noise:.4f}); proxy {row['proxy_gain']:+.4f}; sqrt(KL) {row['sqrt_kl']:.3f}; "
                     f"gold win rate vs initial {row['win_rate']:.3f}.")
        if row["proxy_gain"] > 0 and row["gold_gain"] < -noise:
            lines.append(f"{method}: proxy reward rose while gold fell: reward hacking.")
    if "brme" in rows:
        brme = rows["brme"]
        for method, row in rows.items():
            if method == "brme":
                continue
            noise = 2 * math.hypot(brme["gold_standard_error"], row["gold_standard_error"])
            difference = brme["gold"] - row["gold"]
            relation = "above" if difference > noise else "below" if difference < -noise else "not distinguishable from"
            lines.append(f"brme vs {method}: gold {difference:+.4f}, {relation} it at 2 standard errors.")
    seeds = {len(runs) for runs in inputs.curves.values()}
    if seeds == {1}:
        lines.append("One PPO seed per method: the spread over seeds is not measured (set ppo_seeds to >= 2 seeds).")
    return lines


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    comparison = [[method, row["reward_model"], row["aggregation"], row["seeds"], row["gold"], row["gold_seed_std"],
                   row["gold_gain"], row["win_rate"], row["proxy"], row["proxy_gain"], row["sqrt_kl"],
                   row["best_of_n_gold"]]
                  for method, row in inputs.comparison.items()]
    samples_html = []
    for method in ["initial", *inputs.comparison]:
        rows = [row for row in inputs.samples if row["method"] == method]
        if not rows:
            continue
        last_step = max(row["step"] for row in rows)
        picked = [row for row in rows if row["step"] == last_step and row.get("seed", 0) == min(
            r.get("seed", 0) for r in rows)][:3]
        own = "initial" if method == "initial" else method
        samples_html.append(f"<h3>{html.escape(method)} (step {last_step})</h3>" + _table(
            ["prompt", "response", "gold", "proxy"],
            [[row["prompt"], row["response"], row["gold"], row.get(f"proxy/{own}", "")] for row in picked]))
    total = sum(inputs.stage_seconds.values())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>robust-rlhf report ({html.escape(inputs.profile)})</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;
vertical-align:top}}th{{background:#f2f2f2}}img{{max-width:100%}}li{{margin:.2em 0}}</style></head><body>
<h1>robust-rlhf: gold reward vs KL, profile <code>{html.escape(inputs.profile)}</code></h1>
<p>A gold scorer stands in for human judgement; the reward models learned from its noisy preferences;
PPO optimised each method's proxy reward. The gold reward says what really improved.</p>
<h2>What was measured</h2><ul>{''.join(f'<li>{html.escape(line)}</li>' for line in findings(inputs))}</ul>
{''.join(f'<p><em>{html.escape(note)}</em></p>' for note in inputs.notes)}
<h2>Methods at the last PPO checkpoint</h2>
<p>Initial policy: gold {inputs.initial['gold']:.4f} (std {inputs.initial['gold_std']:.4f} over
{inputs.initial['samples']} samples). Gold and proxy are means over the held-out prompts' samples and
over seeds; "gold seed std" is the spread over PPO seeds; win rate is P(gold(policy) &gt;
gold(initial)) on paired samples, ties counted half.</p>
{_table(["method", "reward model", "aggregation", "seeds", "gold", "gold seed std", "gold gain", "win rate",
         "proxy", "proxy gain", "sqrt KL", "best-of-N gold"], comparison)}
<h2>Overoptimization: reward against sqrt(KL) over PPO checkpoints</h2>{overoptimization_figure(inputs.curves)}
<h2>Best-of-n from the initial policy</h2>{best_of_n_figure(inputs.best_of_n)}
{reward_model_section(inputs.reward_metrics, inputs.comparison, inputs.methods)}
<h2>Sample responses</h2>{''.join(samples_html)}
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


ENSEMBLE_MEMBERS = {"heads": "linear Bradley-Terry heads on the backbone's frozen features, each fitted to its own "
                             "bootstrap resample of the training pairs (bagging)",
                    "models": "backbones fine-tuned apart, differing only by seed (Coste et al.)"}


def reward_model_section(reward_metrics: dict, comparison: dict[str, dict], methods: dict[str, dict],
                         split: str = "test") -> str:
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
            policies = [f"{method}: {interval_text(result.get(f'{kind}_disagreement_ratio'))}"
                        for method, result in comparison.items() if f"{kind}_disagreement_ratio" in result]
            uncertainty.append([f"{kind} ({held_out})", interval_text(row.get("relative_disagreement")),
                                interval_text(row.get("auroc_disagreement_misranked")),
                                interval_text(row.get("auroc_sigma_misranked")), interval_text(shift),
                                "; ".join(policies) or "n/a", _shares(row.get("nominal_share")),
                                _shares(row.get("min_share"))])
    pairs = figures.get("pairs", "?")
    return f"""<h2>Reward models on the {split} split</h2>
<p>{pairs} held-out pairs from {figures.get('prompts', '?')} distinct prompts; every interval is a 95% cluster
bootstrap over prompts. Accuracy is against the noisy labels, gold accuracy against the gold order;
NLL is each model's own likelihood of the labels (the BRME's with its sigmas: Thurstone). The
ensemble's members are {html.escape(ENSEMBLE_MEMBERS.get(layout, layout or 'unknown'))}; the BRME's heads
share one backbone and are anchored around the stage-1 head (docs/method.md).</p>
{_table(["model", "accuracy", "gold accuracy", "NLL", "ECE"], quality)}
<h2>Is the uncertainty informative?</h2>
<p>Relative disagreement: mean std of mu across heads over the spread of rewards across responses (0: the
heads are one model). AUROC: how well a pair's head disagreement (or the BRME's sigma) picks out the pairs
the model's mean ranks against gold (0.5: no better than chance). Off-distribution ratio: disagreement on
responses that are not the initial policy's (high-temperature samples; each method's final PPO samples)
over disagreement on the initial policy's own. Shares: how often each head is nominal (smallest sigma) /
the min.</p>
{_table(["reward model", "relative disagreement", "AUROC disagreement", "AUROC sigma",
         "off-distribution ratio (hot samples)", "off-distribution ratio (final policies)", "nominal share",
         "min share"], uncertainty)}
<p>An AUROC counts as informative only when its interval lies above 0.5 on both held-out splits (val and
test): one split alone, among this many figures, is too easily chance.</p>
<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in uncertainty_findings(reward_metrics, comparison))}</ul>"""


def _quality_cells(row: dict) -> list[str]:
    return [interval_text(row.get("accuracy")), interval_text(row.get("gold_accuracy")),
            interval_text(row.get("nll")), interval_text(row.get("ece"))]


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
        verdict = ("yes on " + " and ".join(s for s, v in zip(splits, single) if v) + " (the interval lies above 0.5)"
                   if any(single) else "no (every interval reaches 0.5)")
        lines.append(f"The single reward model ranks held-out pairs better than chance under gold: {verdict}.")
    for kind in ("brme", "ensemble"):
        if not any(kind in reward_metrics[split] for split in splits):
            continue
        shown, one_split, refuted = [], [], []
        for key, name in (("auroc_disagreement_misranked", "head disagreement predicts gold mis-rankings"),
                          ("auroc_sigma_misranked", "sigma predicts gold mis-rankings")):
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
        checks = {"heads disagree more on high-temperature samples": _above(
            reward_metrics.get("shift", {}).get(kind, {}).get("disagreement_ratio"), 1.0)}
        policies = {method: _above(result[f"{kind}_disagreement_ratio"], 1.0) for method, result in comparison.items()
                    if f"{kind}_disagreement_ratio" in result}
        if policies:
            more = [method for method, verdict in policies.items() if verdict]
            checks["heads disagree more on the final PPO samples of " + (", ".join(more) if more else "any method")] = (
                bool(more))
        shown += [name for name, verdict in checks.items() if verdict]
        refuted += [name for name, verdict in checks.items() if verdict is False]
        caveat = f" Not replicated: {'; '.join(one_split)}." if one_split else ""
        if shown:
            lines.append(f"{kind}: its uncertainty is informative on this run where the interval excludes chance: "
                         f"{'; '.join(shown)}. Not shown (the interval reaches chance): {'; '.join(refuted) or 'none'}."
                         + caveat)
        else:
            lines.append(f"{kind}: no sign that its uncertainty is informative on this run (the intervals reach "
                         f"chance: {'; '.join(refuted) or 'nothing measured'})." + caveat)
    return lines
