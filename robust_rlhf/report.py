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
    reward_rows = []
    val = inputs.reward_metrics.get("val", {})
    if "single" in val:
        reward_rows.append(["single (BT)", *_rm_cells(val["single"]), "", ""])
    for kind in ("brme", "ensemble"):
        if kind in val:
            reward_rows.append([f"{kind} (ensemble mean)", *_rm_cells(val[kind]["ensemble_mean"]),
                                val[kind].get("mean_sigma", ""), val[kind].get("head_disagreement", "")])
            for head, metrics in val[kind].items():
                if re.fullmatch(r"head_\d+", head):
                    reward_rows.append([f"{kind} {head}", *_rm_cells(metrics), "", ""])
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
<h2>Reward models on the validation split</h2>
<p>Accuracy against the noisy labels the models were trained on, and against the noiseless gold
labels; NLL and ECE of P(chosen &gt; rejected).</p>
{_table(["model", "accuracy", "gold accuracy", "NLL", "ECE", "mean sigma", "head disagreement"], reward_rows)}
<h2>Sample responses</h2>{''.join(samples_html)}
<h2>Stage wall times</h2>
{_table(["stage", "seconds"], [[name, seconds] for name, seconds in inputs.stage_seconds.items()] + [["total", total]])}
</body></html>
"""


def _rm_cells(metrics: dict) -> list:
    return [metrics.get("accuracy", ""), metrics.get("gold_accuracy", ""), metrics.get("nll", ""),
            metrics.get("ece", "")]
