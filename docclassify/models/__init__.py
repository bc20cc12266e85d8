"""Models: timm factory (any image size), DiT weights, safetensors checkpoints."""
