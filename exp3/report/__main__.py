"""`python -m exp3.report`: rebuild the report (exp3.report.main)."""

from exp3.report import main

raise SystemExit(main())
