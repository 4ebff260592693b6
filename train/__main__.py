"""Entry point of the post-training stages: `python -m train stage=diffusion|distill|adversarial model=tiny data=doom`.

    python -m train stage=diffusion   model=tiny data=doom        # -> checkpoints/diffusion_tiny.safetensors
    python -m train stage=distill     model=tiny data=doom        # -> checkpoints/distill_tiny.safetensors
    python -m train stage=adversarial model=tiny data=doom        # -> checkpoints/adversarial_tiny + world_tiny
    torchrun --nproc_per_node=8 -m train stage=diffusion model=small ...

Any field of train/stages/config.py can be overridden (`stage.steps=50 resume=true`).
"""

from __future__ import annotations


def main() -> None:
    """Hydra entry point (config: train/conf/config.yaml)."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from train.common import command_line_exits, help_node
    from train.distributed import destroy
    from train.stages import build_stage
    from train.stages.config import StageConf, TrainConfig, check_declared

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(group="hydra/help", name="train_help", node=help_node(
        "python -m train", __doc__.split("\n\n")[0], [("", TrainConfig), ("stage.", StageConf)],
        "Examples:\n" + __doc__.split("\n\n")[1]))

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def _run(conf) -> None:
        try:
            with command_line_exits():
                cfg = OmegaConf.to_object(conf)
                check_declared(cfg)
                build_stage(cfg).run()
        finally:
            destroy()

    _run()


if __name__ == "__main__":
    main()
