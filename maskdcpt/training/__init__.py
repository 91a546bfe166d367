"""Training: one step-based trainer shared by pre-training and fine-tuning."""
