"""Detection of adversarial inputs from the logits log p(x, y_c): detectors, their storage, their metrics."""

from genrobust.detection.detectors import (DEFAULT_FPR, DETECTORS, Detection, DetectionNotApplicable, Detector,
                                           KLDetector, LogitDetector, MarginalDetector, check_applicable)
from genrobust.detection.metrics import detection_rate, false_positive_rate, roc
from genrobust.detection.store import check_detector, detectors_path, fit_detectors, load_detector

__all__ = ["DEFAULT_FPR", "DETECTORS", "Detection", "DetectionNotApplicable", "Detector", "KLDetector",
           "LogitDetector", "MarginalDetector", "check_applicable", "check_detector", "detection_rate",
           "detectors_path", "false_positive_rate", "fit_detectors", "load_detector", "roc"]
