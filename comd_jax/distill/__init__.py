"""Competitive distillation: pool, assessors, difficult selection, augmentors."""
