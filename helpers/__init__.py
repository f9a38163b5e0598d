"""The prune & distill workbook's helper package: one subpackage per stage of the recipe.

``data`` (text, token blocks, calibration) -> ``importance`` (what matters) -> ``pruning`` (new, smaller models) ->
``distill`` (heal them from the teacher) -> ``evaluate`` (perplexity, generation, speed); ``recipes`` composes the
stages, ``workbook`` runs and records them. ``architecture``, ``hardware``, ``models`` and ``io`` serve all stages.
The map and the rules are in docs/architecture.md.
"""
