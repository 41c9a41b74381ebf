"""The application: the ``compress`` command line, the pipeline and its stages, the width planner, the ablation and
the commands on existing artifacts. It calls the library (``compressor``) and the exporters
(``compressor.exporters``); nothing below imports it."""
