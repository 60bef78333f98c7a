"""Few-shot in-vehicle intrusion detection with MAML: a task distribution over attack types on the same engine.

Source-free base: ``samples`` (SampleSet), ``families`` (task families, IdsData), ``config``,
``splits``, ``metrics``, ``alerts``, ``episodes``, ``models``. ``traffic`` is the interface of
a traffic kind; its implementations live in ``can`` (frames, capture readers, the bus
simulator, features, rules, sources) and ``ethernet`` (pcap reader, zonal-network simulator,
packet features, rules, sources), registered in ``registry``. ``sources`` prepares a config's
data, ``experiment`` trains and compares methods, ``operational`` streams them over whole
captures, ``detect`` saves, adapts and streams detectors, ``report`` writes the comparison;
``cli`` is ``fastmaml ids``.
"""
