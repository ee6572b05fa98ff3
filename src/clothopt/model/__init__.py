"""The model: backbone specs, the one composition of the network, and the head."""
