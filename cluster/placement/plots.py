"""Plots of a simulation: load per region over the day (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def plot_load(figures: dict, path: str | Path) -> Path:
    """Write a PNG of each region's mean load (share of its capacity) per hour of the day, one
    panel for the scheduler and one for the nearest-region baseline when it ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("scheduler (lowest cost meeting the SLO)", figures)]
    if "nearest" in figures.get("baselines", {}):
        panels.append(("nearest region", figures["baselines"]["nearest"]))
    capacity = figures["capacity_sessions"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), sharex=True,
                             squeeze=False)
    for ax, (title, policy) in zip(axes[:, 0], panels, strict=True):
        for region, load in policy["load_sessions_by_hour"].items():
            share = [100.0 * x / max(1, capacity[region]) for x in load]
            ax.plot([h + 0.5 for h in range(len(share))], share, label=region, linewidth=1.6)
        ax.axhline(100.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("load, % of capacity")
        ax.set_ylim(0, 135)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"{title}: ${policy['cost_per_avatar_hour_usd']:.4f} per avatar-hour, "
                     f"SLO violations {policy['slo_violation_rate']:.4%}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("hour of the day (UTC)")
    axes[-1, 0].set_xlim(0, 24)
    axes[0, 0].legend(ncol=len(capacity), fontsize=8, loc="upper center", frameon=False)
    fig.suptitle(f"Load per region over the day ({figures['sessions']:,} sessions, "
                 f"seed {figures['seed']})")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
