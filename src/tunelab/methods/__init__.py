"""Methods decide which weights learn: one module per method (`full`, `freeze`, `lora`, `dora`, `qlora`, `ia3`,
`prefix`, `prompt`, `adapter`, `hybrid`) and one line in `registry.py`. `base.Method` is what a method provides;
`trained` reads a finished run's result back onto its base model."""
