"""Training: optimizer and labels, train state from shapes, the pure jitted step."""
