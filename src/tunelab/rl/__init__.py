"""Online reinforcement learning pieces for the GRPO and PPO objectives: rollouts (sampling completions and
turning them into training batches, advantages) and rewards (Python functions, a trained reward model)."""
