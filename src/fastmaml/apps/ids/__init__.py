"""Few-shot CAN intrusion detection: readers, simulated bus, features, classifiers, rule baselines.

Modules: ``samples`` (SampleSet), ``frames`` (CanFrame, FrameBatch), ``can_readers``,
``can_sim``, ``features``, ``models``, ``baselines``. Automotive Ethernet lives in ``ethernet``.
"""
