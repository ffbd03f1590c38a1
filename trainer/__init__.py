"""Trainer: reward model, DPO/KTO on LoRA, evaluation gate, versioned adapter registry."""
