"""Knowledge distillation: `objective` (`distill`: logits, hidden states and attention maps of a teacher with the
student's tokenizer, live or from a top-k cache), `sequence` (`seq_distill`: the student learns the teacher's
generated answers, any tokenizer), `losses` (the divergences), `cache` (the teacher's top-k on disk) and `student`
(a student made from its teacher by dropping layers)."""
