"""Memory planner command: per-GPU memory of a generator + discriminator job, ZeRO-2 vs ZeRO-3.

    python -m worldmodel.parallel.plan --model paper-8b --gpus 256 --cp 8

prints one column per (model, ZeRO stage) and the sum for the adversarial stage, where
both models live on every GPU (generator ZeRO-2 as in the paper, or ZeRO-3).
"""

from __future__ import annotations

import argparse

from worldmodel.parallel.memory_plan import PlanConfig, format_table, plan, with_fields


def main(argv: list[str] | None = None) -> str:
    """Parse arguments, print the table, return it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="paper-8b", help="model size from the registry")
    ap.add_argument("--gpus", type=int, default=256, help="total GPUs (dp_shard x cp)")
    ap.add_argument("--cp", type=int, default=8, help="context-parallel GPUs per sample")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--seconds", type=float, default=10.0, help="clip/segment length per forward")
    ap.add_argument("--optimizer", default="rmsprop", choices=["adamw", "rmsprop", "sgd"])
    ap.add_argument("--no-activation-checkpointing", action="store_true")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU, for the fits/does-not-fit line")
    a = ap.parse_args(argv)
    base = PlanConfig(model=a.model, width=a.width, height=a.height, seconds=a.seconds, optimizer=a.optimizer,
                      activation_checkpointing=not a.no_activation_checkpointing)
    gen2 = plan(with_fields(base, zero=2, kv_cache=True), a.gpus, a.cp)
    gen3 = plan(with_fields(base, zero=3, kv_cache=True), a.gpus, a.cp)
    disc3 = plan(with_fields(base, role="discriminator", zero=3), a.gpus, a.cp)
    both2 = {k: gen2.get(k, 0.0) + disc3.get(k, 0.0) for k in gen2 | disc3}
    both3 = {k: gen3.get(k, 0.0) + disc3.get(k, 0.0) for k in gen3 | disc3}
    table = format_table([("G ZeRO-2", gen2), ("G ZeRO-3", gen3), ("D ZeRO-3", disc3),
                          ("G2 + D3", both2), ("G3 + D3", both3)])
    head = (f"{a.model}: generator {gen2['_params_b']:.2f}B + discriminator {disc3['_params_b']:.2f}B parameters, "
            f"{a.gpus} GPUs = {a.gpus // a.cp} data-parallel x {a.cp} context-parallel, {a.width}x{a.height}, "
            f"{a.seconds:g} s clips, {gen2['_tokens_per_gpu']} tokens per GPU, optimizer {a.optimizer}, "
            f"activation checkpointing {'off' if a.no_activation_checkpointing else 'on'}")
    fits = ", ".join(f"{n}: {'fits' if r['total'] <= a.gpu_memory else 'does NOT fit'}"
                     for n, r in (("G2 + D3", both2), ("G3 + D3", both3)))
    text = (f"{head}\n\n{table}\n\nOn {a.gpu_memory:g} GiB GPUs -> {fits} "
            "(estimate; add 3-6 GiB for the CUDA context, NCCL buffers and fragmentation).")
    print(text)
    return text


if __name__ == "__main__":
    main()
