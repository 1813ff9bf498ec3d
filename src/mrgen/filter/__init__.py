"""``mrgen filter``: keep the synthetic candidates that follow their mask (MRGen's autofilter).

Public API: :func:`run` (the stage), :class:`~mrgen.filter.scorers.Scorer` and
:func:`~mrgen.filter.scorers.build_scorer`, :class:`~mrgen.filter.classical.ClassicalScorer`,
:func:`~mrgen.filter.select.select_mask` with :class:`~mrgen.filter.select.Thresholds`,
:func:`~mrgen.filter.calibrate.calibrate` / :func:`~mrgen.filter.calibrate.thresholds_from` (thresholds from real
pairs' scores), :class:`FilterStarved` (too few masks kept).
"""

from mrgen.filter.calibrate import CalibrationError, calibrate, thresholds_from
from mrgen.filter.classical import ClassicalScorer
from mrgen.filter.scorers import Sam2Scorer, Scorer, SegmenterScorer, build_scorer, score_any
from mrgen.filter.select import Thresholds, failures, select_mask
from mrgen.filter.stage import FilterStarved, run, score_candidates

__all__ = ["run", "Scorer", "ClassicalScorer", "Sam2Scorer", "SegmenterScorer", "build_scorer", "score_any",
           "Thresholds", "failures", "select_mask", "score_candidates", "calibrate", "thresholds_from", "CalibrationError",
           "FilterStarved"]
