"""The training engine: device and precision policy, data feeding, the loop."""
