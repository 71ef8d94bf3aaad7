"""Objectives say what the loss is: one module per objective (sft, pretrain, dpo, orpo, kto, reward) or one package
per technique with several files (classify/, rag/, distill/, rl/, embed/), and one line each in `registry.py`.

An objective's loss is `loss(model, batch, ctx) -> LossParts`: a *summed* loss and the count it should be divided
by, so the loop can normalise exactly over every target (token, pair, example) of an optimizer step, however it
is split into micro-batches. `ctx` is what the objective's `setup` built: a reference model, a teacher, settings.
"""
