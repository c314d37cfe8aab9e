"""Measured-vs-fitted plots, one PNG per operation group (matplotlib is optional)."""

from __future__ import annotations

from pathlib import Path

from calibrate.fit import GroupFit


def draw(fits: dict[str, GroupFit], folder: Path, title: str = "") -> list[Path] | str:
    """PNG files written, or a one-line note saying why none were."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; plots skipped (pip install matplotlib)"
    out = []
    for name, f in fits.items():
        if not f.rows:
            continue
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
        for hold, marker, tag in ((False, "o", "fit"), (True, "x", "held out")):
            rows = [r for r in f.rows if r["holdout"] == hold]
            if not rows:
                continue
            m = [r["measured_s"] * 1e6 for r in rows]
            p = [r["predicted_s"] * 1e6 for r in rows]
            ax.scatter(m, p, marker=marker, s=18, label=f"{tag} ({len(rows)})")
            ax2.scatter(
                m, [100 * (pi / mi - 1) for pi, mi in zip(p, m, strict=True)], marker=marker, s=18, label=tag
            )
        lo = min(r["measured_s"] for r in f.rows) * 1e6 * 0.8
        hi = max(r["measured_s"] for r in f.rows) * 1e6 * 1.25
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="measured (µs)",
            ylabel="fitted (µs)",
            title=f"{name}: fit median {f.train.median_pct:.1f}%, held out {f.holdout.median_pct:.1f}%",
        )
        ax.legend(fontsize=8)
        ax2.axhline(0, color="k", lw=0.8)
        for y in (-5, 5):
            ax2.axhline(y, color="grey", lw=0.6, ls="--")
        ax2.set(xscale="log", xlabel="measured (µs)", ylabel="fitted / measured − 1 (%)")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = Path(folder) / f"fit_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out
