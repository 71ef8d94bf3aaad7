"""Online reinforcement learning: `grpo` and `ppo` (the objectives), `rollout` (sampled completions as training
batches, advantages) and `rewards` (Python reward functions and a trained reward model)."""
