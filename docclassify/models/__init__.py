"""Models: timm factory and self-describing checkpoints."""
