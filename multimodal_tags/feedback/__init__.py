"""Feedback from reviewers: events, their store, calibration from judgements, the near-real-time learner and adaptation of the model."""
