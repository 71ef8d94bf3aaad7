"""Knowledge distillation pieces the `distill` objectives use: divergences between teacher and student
distributions, a disk cache of the teacher's top-k log-probs, and students made from a teacher by dropping layers."""
