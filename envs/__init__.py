"""Gymnasium environments: the learned world and the real camera world on ViZDoom."""

from gymnasium.envs.registration import register

# The engine starts lazily on the first reset, so registering (and importing envs) is cheap.
register(id="worldmodel/DoomCamera-v0", entry_point="envs.doom:DoomCameraEnv")
# A task's real-engine twin (a ViZDoom scenario with monsters; TakeCover by default).
register(id="worldmodel/DoomTask-v0", entry_point="envs.doom_task:DoomTaskEnv")
# The learned world: make() builds one env, make_vec() one batched env (one forward for all N).
register(
    id="worldmodel/World-v0",
    entry_point="envs.world:WorldEnv",
    vector_entry_point="envs.world_vector:WorldVectorEnv",
)
