"""CAN traffic source: frames, capture readers, the vehicle-bus simulator, features and rule baselines."""
