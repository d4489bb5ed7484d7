"""Train models on snapshots and record the cut with every MLflow run; rebuild and trace.

Public API (heavy imports stay inside the modules):

- trainer.train.train / TrainResult
- trainer.rebuild.rebuild / RebuildReport
- trainer.lineage.model_lineage / row_lineage
- trainer.recipe.RecipeResult / recipe / load_recipe
- trainer.provider.SnapshotProvider, trainer.testing.FakeSnapshotProvider
"""
