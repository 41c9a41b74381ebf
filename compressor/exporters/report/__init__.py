"""Reports: merge profile, evaluation, export and benchmark JSONs from any number of machines into report.md and a
self-contained report.html.

``summary`` reads the documents and says them in numbers (metrics, speed-ups, the headline); ``tables`` renders the
tables (the benchmark table, once, for the terminal and the report; one row per exported file); ``sections`` is the
Markdown, a list of section functions (:data:`REPORT_SECTIONS`); ``figures`` the plots; ``html`` the page; ``write``
the files (``compress report``, the pipeline's report stage).
"""

from .figures import figures, make_plots, whisker  # noqa: F401
from .html import build_html  # noqa: F401
from .sections import REPORT_SECTIONS, ReportData, build_markdown, loss_terms_table, section_export  # noqa: F401
from .summary import METRICS, SMALL_FID_N, SMALL_N_NOTE, change_text, classify, headline, metric_text, sig, speedups  # noqa: F401
from .tables import benchmark_table, md_table  # noqa: F401
from .write import report_run, write_report  # noqa: F401
