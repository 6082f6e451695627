"""Figures of the studies (matplotlib, Agg): :func:`figure`, the one way a study makes a figure
(panels, title, layout, file); the accuracy matrix as a heat map and the per-iteration accuracy
of every task over training (the stability-gap picture), both as mean (± std bands) over seeds."""

from __future__ import annotations

import contextlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@contextlib.contextmanager
def figure(
    path: str, size, n: int = 1, *, title: str = "", title_size=None, dpi: int = 120, vertical=False, **kw
):
    """``with figure(path, (w, h), n, title=...) as axes:`` a figure of ``n`` panels in a row
    (``vertical``: in a column; ``kw``: :func:`matplotlib.pyplot.subplots`'s, e.g. ``sharex``),
    ``axes`` a flat array of them; on leaving, the title (``title_size``: its font size), a tight
    layout, the file ``path`` at ``dpi`` and the figure closed (closed unsaved on an error)."""
    fig, axes = plt.subplots(*((n, 1) if vertical else (1, n)), figsize=size, squeeze=False, **kw)
    try:
        yield axes.ravel()
        if title:
            fig.suptitle(title, **({} if title_size is None else {"fontsize": title_size}))
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def accuracy_matrices(
    R_by_method: dict,
    path: str,
    title: str = "",
    *,
    value_range=(0.0, 1.0),
    what: str = "task",
    cmap="viridis",
) -> str:
    """``R_by_method[name]``: S x T x T per-seed accuracy matrices (``value_range=None``: the
    colour scale of the data, e.g. for a loss matrix with ``cmap="viridis_r"``)."""
    names = list(R_by_method)
    title = title or "accuracy matrix R[i, j] (mean ± std over seeds)"
    with figure(path, (3.2 * len(names), 3.3), len(names), title=title) as axes:
        for ax, name in zip(axes, names):
            R = np.asarray(R_by_method[name])
            mean, std = R.mean(0), R.std(0)
            T = mean.shape[0]
            lo, hi = value_range or (float(np.min(mean)), float(np.max(mean)))
            ax.imshow(mean, vmin=lo, vmax=hi, cmap=cmap)
            bright = (mean - lo) / max(hi - lo, 1e-12) < 0.6
            if cmap.endswith("_r"):
                bright = ~bright
            for i in range(T):
                for j in range(T):
                    ax.text(
                        j,
                        i,
                        f"{mean[i, j]:.2f}\n±{std[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="w" if bright[i, j] else "k",
                    )
            ax.set_title(name)
            ax.set_xlabel(f"evaluated on {what} j")
            ax.set_ylabel(f"trained through {what} i")
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
    return path


def stability_gap(
    trace_by_method: dict,
    eval_every: int,
    path: str,
    title: str = "",
    *,
    ylabel: str = "accuracy",
    ylim=(-0.02, 1.02),
    what: str = "task",
    labels=None,
) -> str:
    """``trace_by_method[name]``: S x T x E x J per-seed accuracies (task trained, evaluation,
    set evaluated: the T tasks' own, then any held-out ones); one panel per method, one line per evaluated task (``labels``: their names),
    ± std bands."""
    names = list(trace_by_method)
    title = title or "per-iteration accuracy of every task (mean ± std over seeds)"
    with figure(path, (9, 2.4 * len(names)), len(names), title=title, vertical=True, sharex=True) as axes:
        for ax, name in zip(axes, names):
            tr = np.asarray(trace_by_method[name])
            S, T, E, J = tr.shape  # J >= T: sets no task trains may follow the tasks' own
            A = tr.reshape(S, T * E, J)
            steps = (np.arange(T * E) + 1) * eval_every
            mean, std = A.mean(0), A.std(0)
            for j in range(J):
                ax.plot(steps, mean[:, j], lw=1, label=labels[j] if labels else f"{what} {j}")
                ax.fill_between(steps, mean[:, j] - std[:, j], mean[:, j] + std[:, j], alpha=0.2)
            for i in range(1, T):
                ax.axvline(i * E * eval_every, color="gray", lw=0.6, ls="--")
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.set_ylabel(ylabel)
            ax.set_title(name, fontsize=9)
        axes[-1].set_xlabel(f"training step (dashed: {what} boundaries)")
        axes[0].legend(fontsize=7, ncol=min(J, 10), loc="lower left" if ylim is not None else "upper right")
    return path


def task_plots(
    raw: dict, name: str, seeds: int, every: int, curves: str = "stability_gap.png", phase: str = "training"
):
    """A continual-learning study's two plots as the study driver's plot functions
    ``fn(res, out_dir) -> path``: every row's accuracy matrix (``raw[row]['R']``, seeds x T x T)
    and its per-task accuracy over ``phase`` (``raw[row]['acc_trace']``, every ``every`` steps)."""
    import os

    return (
        lambda res, out: accuracy_matrices(
            {m: r["R"] for m, r in raw.items()},
            os.path.join(out, "accuracy_matrix.png"),
            f"{name}: accuracy matrix (mean ± std over {seeds} seeds)",
        ),
        lambda res, out: stability_gap(
            {m: r["acc_trace"] for m, r in raw.items()},
            every,
            os.path.join(out, curves),
            f"{name}: per-task accuracy over {phase} (mean ± std over {seeds} seeds)",
        ),
    )
