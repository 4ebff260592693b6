"""The evaluation report: matplotlib PNG curves, frame strips, a rollout GIF and an index.html linking them.

    write_report(results, arrays, "outputs/eval/report")   # results/arrays from train.eval.evaluate

Files: `psnr_vs_step.png`, `ssim_vs_step.png`, `rot_err_per_step.png`, `long_run_stats.png`,
`long_run_psnr.png`, `strip_autoregressive.png`, `strip_long_run.png`, `rollout.gif`, `index.html`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {
    "model": "model",
    "repeat_last_frame": "repeat last frame",
    "camera_zeroed": "model, camera zeroed",
    "camera_shuffled": "model, camera shuffled",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path.name


def curve_plot(curves: dict[str, list[float]], ylabel: str, title: str, path: Path,
               hlines: dict[str, float] | None = None) -> str:
    """One line per method over steps 1..S (plus optional horizontal reference lines)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, ys in curves.items():
        ys = np.asarray([np.nan if y is None else y for y in ys], dtype=float)
        ax.plot(np.arange(1, len(ys) + 1), ys, label=LABELS.get(name, name), marker="." if len(ys) < 40 else None)
    for name, y in (hlines or {}).items():
        if y is not None:
            ax.axhline(y, ls="--", lw=1, color="gray")
            ax.annotate(name, (1, y), fontsize=8, color="gray", va="bottom")
    ax.set_xlabel("step (4 frames each)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def strip(rows: dict[str, np.ndarray], cols: list[int], col_label: str, title: str, path: Path) -> str:
    """A grid of frames: one row per source (each (T, H, W, 3)), one column per frame index."""
    plt = _plt()
    H, W = next(iter(rows.values())).shape[1:3]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols) * W / H, 1.6 * len(rows) + 0.4),
                             squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c, i in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(frames[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{col_label} {i}", fontsize=8)
            if c == 0:
                ax.set_ylabel(LABELS.get(name, name), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def long_stats_plot(long: list[dict[str, Any]], path: Path) -> str:
    """Brightness, contrast and sharpness per frame over the long run, generated vs real (first trajectory)."""
    plt = _plt()
    e = long[0]
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for ax, key in zip(axes, ("brightness", "contrast", "sharpness"), strict=True):
        ax.plot(e["stats_real"][key], lw=0.8, label="real engine")
        ax.plot(e["stats_generated"][key], lw=0.8, label="model")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"long run on {e['map']}: collapsed={e['collapse']['collapsed']}")
    axes[-1].set_xlabel("frame")
    return _save(fig, path)


def _frame_indices(n_frames: int, fps: int, steps: list[int]) -> list[int]:
    return [s * fps for s in steps if s * fps < n_frames]


def write_gif(real: np.ndarray, gen: np.ndarray, path: Path, fps: int = 15) -> str:
    """Real (left) and generated (right) side by side, (T, H, W, 3) each."""
    import imageio.v2 as imageio

    imageio.mimsave(path, list(np.concatenate([real, gen], axis=2)), duration=1.0 / fps, loop=0)
    return path.name


def _table(results: dict[str, Any]) -> str:
    head = ["method", "TF PSNR", "TF SSIM"]
    ar_steps = list(results["methods"]["model"]["autoregressive"]["psnr"])
    head += [f"AR PSNR@{s}" for s in ar_steps] + [f"AR SSIM@{s}" for s in ar_steps]
    head += ["RotErr (deg)", "rot. est. ok", "trans. dir. err (deg)", "trans. est. ok", "yaw gain",
             "yaw frozen share"]
    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    cam = lambda c: [fmt(c["rot_err_deg"]), fmt(c["success_share"]), fmt(c["trans_dir_err_deg"]),  # noqa: E731
                     fmt(c["trans_success_share"]), fmt(c.get("yaw_gain")),
                     fmt(c.get("yaw_frozen_share"))]
    rows = []
    for name, m in results["methods"].items():
        ar = m["autoregressive"]
        rows.append([LABELS.get(name, name), fmt(m["teacher_forced"]["psnr"]), fmt(m["teacher_forced"]["ssim"], 3)]
                    + [fmt(ar["psnr"][s]) for s in ar_steps] + [fmt(ar["ssim"][s], 3) for s in ar_steps] + cam(m["camera"]))
    v = results["vae_reconstruction"]
    for label, quality, c in (("VAE reconstruction of the real frames", [fmt(v["psnr"]), fmt(v["ssim"], 3)], v["camera"]),
                              ("real engine frames (estimator floor)", ["-", "-"], results["real_engine_camera"])):
        rows.append([label, *quality] + ["-"] * (2 * len(ar_steps)) + cam(c))
    refs = (("warp the last latent, no transformer (reference)", results.get("warp_last_latent")),
            ("the network without its reprojection memory (reference)", results.get("network_without_reprojection")))
    for label, w in refs:
        if w:  # recycle_warp worlds: the warp alone; reprojecting worlds: the network alone
            rows.append([label, "-", "-"]
                        + [fmt(w["autoregressive"]["psnr"].get(str(s))) for s in ar_steps] + ["-"] * len(ar_steps)
                        + cam(w["camera"]))
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{tr}</table>"


def write_report(results: dict[str, Any], arrays: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write every PNG, the GIF and index.html into out_dir; returns the file names written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m, fps = results["methods"], arrays["fps"]
    files = [
        curve_plot({k: v["autoregressive"]["psnr_per_step"] for k, v in m.items()}, "PSNR (dB)",
                   "autoregressive PSNR vs step (free rollout, real actions)", out / "psnr_vs_step.png",
                   {"model teacher-forced": m["model"]["teacher_forced"]["psnr"],
                    "VAE reconstruction": results["vae_reconstruction"]["psnr"]}),
        curve_plot({k: v["autoregressive"]["ssim_per_step"] for k, v in m.items()}, "SSIM",
                   "autoregressive SSIM vs step", out / "ssim_vs_step.png",
                   {"VAE reconstruction": results["vae_reconstruction"]["ssim"]}),
        curve_plot({**{k: v["camera"]["rot_err_deg_per_step"] for k, v in m.items()},
                    "VAE reconstruction": results["vae_reconstruction"]["camera"]["rot_err_deg_per_step"],
                    "real engine frames": results["real_engine_camera"]["rot_err_deg_per_step"]},
                   "RotErr (deg)", "camera following: rotation error per step", out / "rot_err_per_step.png"),
        long_stats_plot(arrays["long"], out / "long_run_stats.png"),
        curve_plot({"model": results["long_run"]["psnr_per_step"]}, "PSNR (dB)", "long run: PSNR vs the real engine",
                   out / "long_run_psnr.png"),
    ]
    real, gen = arrays["real"][0], arrays["generated"]
    steps = [0, 1, 4, 16, 64, 128]
    cols = _frame_indices(real.shape[0], fps, steps)
    files.append(strip({"real engine": real, **{k: v[0] for k, v in gen.items()}}, cols, "frame",
                       "autoregressive rollouts from the real first frame (trajectory 0)",
                       out / "strip_autoregressive.png"))
    lr, lg = arrays["long_real"][0], arrays["long_generated"][0]
    long_cols = list(np.linspace(0, lr.shape[0] - 1, 7).round().astype(int))
    files.append(strip({"real engine": lr, "model": lg}, long_cols, "frame",
                       f"long run ({lr.shape[0] - 1} frames)", out / "strip_long_run.png"))
    files.append(write_gif(real, gen["model"][0], out / "rollout.gif"))
    (out / "index.html").write_text(index_html(results, files))
    files.append("index.html")
    return files


def index_html(results: dict[str, Any], files: list[str]) -> str:
    """The report page: headline table, long-run verdict, every figure."""
    lr = results["long_run"]
    verdicts = "".join(
        f"<li>{html.escape(t['map'])}: collapsed={t['collapse']['collapsed']}, longest flagged runs "
        f"{html.escape(str(t['collapse']['longest_run']))}</li>" for t in lr["trajectories"]
    )
    imgs = "".join(f'<h3>{html.escape(f)}</h3><img src="{html.escape(f)}">' for f in files)
    d = results["data"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>World model evaluation</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}} img{{max-width:100%}}</style></head><body>
<h1>World model vs the real engine</h1>
<p>checkpoint: <code>{html.escape(results['checkpoint'])}</code>; data: {html.escape(d['source'])},
{html.escape(d['wad'])} {html.escape(d['split'])} maps, {len(d['trajectories'])} trajectories of
{d['trajectories'][0]['steps']} steps; total time {results['timing']['total_s']:.1f} s.</p>
{_table(results)}
<h2>Long run: {lr['frames']} frames, collapsed = {lr['collapsed']}</h2><ul>{verdicts}</ul>
<h2>Figures</h2>{imgs}
</body></html>
"""
