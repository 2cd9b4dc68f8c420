"""The report's figures, drawn with matplotlib's Agg backend (no display needed) and saved as PNG.

One colour per model throughout the report (plots and HTML), so base / SFT / DPO read the same everywhere. Figures
are built with the object API (`Figure`), not pyplot's global figure list, so the report can draw them on a
background thread while the models are evaluated.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from llm_pipeline.evaluation.models import MODEL_LABELS

COLORS = {"base": "#8a8f98", "sft": "#2f6fdb", "dpo": "#e4572e", "rl": "#7b3fb5", "eval": "#2a9d8f"}
STAGE_TITLES = {"base": "Pretraining (base)", "sft": "SFT (LoRA)", "dpo": "DPO"}
DPI = 120


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.25)
    ax.tick_params(labelsize=9)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and value == value:  # skips NaN
            xs.append(row.get("step", i))
            ys.append(float(value))
    return xs, ys


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def loss_curves(logs: dict[str, list[dict]], path: Path) -> Path:
    """Training (and eval, where logged) loss over steps, one panel per training stage."""
    fig = Figure(figsize=(12, 3.6), dpi=DPI)
    axes = fig.subplots(1, 3)
    for ax, name in zip(axes, ("base", "sft", "dpo")):
        rows = logs.get(name) or []
        ax.set_title(STAGE_TITLES[name], fontsize=11, loc="left")
        xs, ys = _series(rows, "loss")
        ex, ey = _series(rows, "eval_loss")
        if not xs and not ex:
            _empty(ax, "no training log")
            continue
        _style(ax)
        if xs:
            ax.plot(xs, ys, color=COLORS[name], lw=1.8, label="train")
        if ex:
            ax.plot(ex, ey, color=COLORS["eval"], lw=1.4, ls="--", marker="o", ms=4, label="held-out")
        ax.set_xlabel("step", fontsize=9)
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("loss (nats/token)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def perplexity_bars(ppl: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars: held-out perplexity per domain (groups) and model (bars). Lower is better."""
    models = [m for m in ("base", "sft", "dpo", "rl") if m in ppl]
    domains = sorted({d for m in models for d in ppl[m]})
    fig = Figure(figsize=(max(6, 1.9 * len(domains) + 2), 3.8), dpi=DPI)
    ax = fig.subplots()
    _style(ax)
    width = 0.8 / max(1, len(models))
    values = [v for m in models for v in ppl[m].values() if v == v]
    if values and max(values) / max(min(values), 1e-9) > 30:
        ax.set_yscale("log")  # an untrained base next to a trained model would flatten every other bar
    for k, m in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(domains))]
        ys = [ppl[m].get(d, float("nan")) for d in domains]
        bars = ax.bar(xs, ys, width * 0.92, color=COLORS[m], label=MODEL_LABELS[m])
        ax.bar_label(bars, labels=[f"{y:,.1f}" if y == y else "" for y in ys], fontsize=7.5, padding=2)
    ax.set_xticks(range(len(domains)), domains, fontsize=10)
    ax.set_ylabel("perplexity (lower is better)", fontsize=9)
    ax.set_title("Held-out perplexity by domain", fontsize=11, loc="left")
    ax.legend(frameon=False, fontsize=9, ncols=len(models), loc="upper left", bbox_to_anchor=(0, -0.12))
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def training_compute(compute: dict, perplexity: dict[str, float | None], path: Path) -> Path:
    """Left: held-out perplexity against the training seconds spent so far (base, then SFT on it, then DPO on SFT).
    Right: passes over the available training data per model (data trained on / data available)."""
    models = [m for m in ("base", "sft", "dpo") if m in compute.get("models", {})]
    fig = Figure(figsize=(11, 3.6), dpi=DPI)
    left, right = fig.subplots(1, 2)
    left.set_title("Held-out perplexity vs training time", fontsize=11, loc="left")
    pts = [(compute["models"][m].get("cumulative_seconds"), perplexity.get(m), m) for m in models]
    pts = [(x, y, m) for x, y, m in pts if x is not None and y is not None and y == y]
    if pts:
        _style(left)
        left.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color="#c5c9d0", lw=1.2, zorder=1)
        for x, y, m in pts:
            left.scatter([x], [y], color=COLORS[m], s=42, zorder=2, label=MODEL_LABELS[m])
            left.annotate(f"{MODEL_LABELS[m]} {y:,.1f}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ys = [y for _, y, _ in pts]
        if max(ys) / max(min(ys), 1e-9) > 30:
            left.set_yscale("log")
        left.set_xlabel("cumulative training wall time (s)", fontsize=9)
        left.set_ylabel("perplexity (lower is better)", fontsize=9)
        left.margins(x=0.15, y=0.2)
    else:
        _empty(left, "no recorded training time")
    right.set_title("Passes over the available training data", fontsize=11, loc="left")
    bars = [(m, compute["models"][m].get("data", {})) for m in models]
    bars = [(m, d) for m, d in bars if d.get("passes") is not None]
    if bars:
        _style(right)
        xs = range(len(bars))
        drawn = right.bar(xs, [d["passes"] for _, d in bars], 0.6, color=[COLORS[m] for m, _ in bars])
        right.bar_label(drawn, labels=[f"{d['passes']:.2f} ({d['unit']})" for _, d in bars], fontsize=7.5, padding=2)
        right.axhline(1.0, color="#999", lw=1, ls=":")
        right.set_xticks(list(xs), [MODEL_LABELS[m] for m, _ in bars], fontsize=10)
        right.set_ylabel("trained on / available", fontsize=9)
        right.margins(y=0.2)
    else:
        _empty(right, "data use not recorded")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def dpo_rewards(rows: list[dict], path: Path) -> Path:
    """DPO reward margin and reward accuracy over training steps (train and held-out where logged)."""
    fig = Figure(figsize=(11, 3.6), dpi=DPI)
    left, right = fig.subplots(1, 2)
    panels = [
        (left, "rewards/margins", "Reward margin (chosen - rejected)", None),
        (right, "rewards/accuracies", "Reward accuracy", 0.5),
    ]
    for ax, key, title, chance in panels:
        ax.set_title(title, fontsize=11, loc="left")
        xs, ys = _series(rows, key)
        ex, ey = _series(rows, f"eval_{key}")
        if not xs and not ex:
            _empty(ax, f"no `{key}` in the DPO log")
            continue
        _style(ax)
        if xs:
            ax.plot(xs, ys, color=COLORS["dpo"], lw=1.8, label="train")
        if ex:
            ax.plot(ex, ey, color=COLORS["eval"], lw=1.4, ls="--", marker="o", ms=4, label="held-out")
        if chance is not None:
            ax.axhline(chance, color="#999", lw=1, ls=":", label="chance")
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.axhline(0, color="#999", lw=1, ls=":")
        ax.set_xlabel("step", fontsize=9)
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def policy_rewards(policies: dict, path: Path) -> Path:
    """Left: mean held-out reward per model under the reward model and its judge. Right: KL to SFT per model."""
    models = [m for m in ("base", "sft", "dpo", "rl") if m in (policies.get("models") or {})]
    fig = Figure(figsize=(11, 3.6), dpi=DPI)
    left, right = fig.subplots(1, 2)
    left.set_title("Held-out reward: reward model and judge", fontsize=11, loc="left")
    right.set_title("KL to SFT (nats per answer)", fontsize=11, loc="left")
    scorers = [s for s in ("reward_model", "judge") if any((policies["models"][m].get("reward") or {}).get(s) is not None for m in models)]
    if models and scorers:
        _style(left)
        width = 0.8 / len(models)
        for k, m in enumerate(models):
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(scorers))]
            ys = [(policies["models"][m].get("reward") or {}).get(s) for s in scorers]
            ys = [float("nan") if y is None else y for y in ys]
            bars = left.bar(xs, ys, width * 0.92, color=COLORS[m], label=MODEL_LABELS[m])
            left.bar_label(bars, labels=[f"{y:+.3f}" if y == y else "" for y in ys], fontsize=7, padding=2)
        left.axhline(0, color="#999", lw=1, ls=":")
        left.set_xticks(range(len(scorers)), ["reward model (RL trained on it)" if s == "reward_model" else "judge (held out from RL)" for s in scorers], fontsize=9)
        left.legend(frameon=False, fontsize=8, ncols=len(models))
        left.margins(y=0.2)
    else:
        _empty(left, (policies.get("why") or "no reward model to score with") if not models or not scorers else "")
    kl = [(m, policies["models"][m].get("kl_to_sft")) for m in models if m != "sft"]
    kl = [(m, v) for m, v in kl if v is not None]
    if kl:
        _style(right)
        bars = right.bar(range(len(kl)), [v for _, v in kl], 0.6, color=[COLORS[m] for m, _ in kl])
        right.bar_label(bars, labels=[f"{v:.3f}" for _, v in kl], fontsize=7.5, padding=2)
        right.set_xticks(range(len(kl)), [MODEL_LABELS[m] for m, _ in kl], fontsize=10)
        right.axhline(0, color="#999", lw=1, ls=":")
        right.margins(y=0.2)
    else:
        _empty(right, "no model besides SFT sampled")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
