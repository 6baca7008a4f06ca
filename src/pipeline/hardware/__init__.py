"""What the machine can do: CPU features today; the facts behind every ISA-dependent choice."""
