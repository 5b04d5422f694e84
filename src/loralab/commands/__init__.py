"""The commands that read and write files — analyses, probes, composed adapters, summaries — on top of the pure
measurements (`loralab.analysis`) and compositions (`loralab.compose`); the CLI maps its commands to these."""
