"""The bottom layer: user errors, config sections and YAML reading, the registry helper, devices and precision,
and the types every layer passes around (messages, batches, losses as sums and counts)."""
