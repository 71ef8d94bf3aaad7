"""Retraining from the traffic log: the next dataset, a challenger, the promotion gate, the champion pointer."""
