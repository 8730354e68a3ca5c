"""The one trainer and what it is made of: the program (model, optimizer, mesh), the data plan,
checkpoints, evaluation, cross-validation and the benchmarks of a config."""
